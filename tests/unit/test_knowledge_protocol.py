"""The knowledge task as the paper ran it: prompt wording against the paper's own records, the
answer prompt, whole-answer grading with every local grader, the paper's edit splitting, the lr
schedule, the top1_always filter, the training pool's exclusion, and eval-knowledge's statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seal.config import FilterConfig, TaskConfig, load_config
from seal.errors import ConfigError, DataError
from seal.evaluation import knowledge as ev
from seal.inner.train import lr_factor
from seal.stages.improve import filter_scores
from seal.tasks import knowledge as kn

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PAPER = ASSETS / "paper_edits_base_sample.json"


def paper_records():
    return json.loads(PAPER.read_text())


def test_implications_prompt_equals_the_papers_prompt_field():
    recs = paper_records()
    assert len(recs) == 4
    for rec in recs:
        assert kn.edit_prompt(rec, "implications") == rec["prompt"]
        assert kn.context_prompt(rec, TaskConfig()) == rec["prompt"]  # the default prompt is the paper's


def test_the_other_variants_equal_the_papers_prompt_fields():
    recs = json.loads((ASSETS / "paper_alternate_prompts.json").read_text())
    assert sorted(r["variant"] for r in recs) == ["long", "rewrite", "self-qa"]
    for rec in recs:
        assert kn.edit_prompt(rec, rec["variant"]) == rec["prompt"]


def test_prompt_variants_are_worded_as_the_papers():
    rec = paper_records()[0]
    assert "produce a long list of implications" in kn.edit_prompt(rec, "long")
    assert "produce a very long list of implications" in kn.edit_prompt(rec, "very-long")
    assert kn.edit_prompt(rec, "self-qa").endswith("\n\nQuestion 1: ")
    assert kn.edit_prompt(rec, "rewrite").endswith("\n\nRewritten passages:\n")
    # "none": the policy still reads the implications prompt, but the fit trains on the passage alone
    cfg = TaskConfig(prompt="none")
    assert kn.context_prompt(rec, cfg) == rec["prompt"]
    job = kn.inner_job(rec, "1. An implication.", cfg, load_config(None).inner)
    assert [e.text for e in job.examples] == [f"{rec['title']}\n{rec['context']}"]


def test_answer_prompt_is_the_papers_and_the_whole_answer_is_graded():
    rec = {"title": "Warsaw", "context": "...", "questions": [{"question": "What is Warsaw?", "answer": "capital"}]}
    cfg = TaskConfig()
    assert kn.probe_prompts(rec, cfg) == [
        "Let's answer a question directly and concisely.\nQuestion: Topic: Warsaw\nWhat is Warsaw?\nAnswer:\n"]
    assert kn.probe_params(cfg, 4).stop_at_newline is False
    out = kn.grade_outputs(rec, ["\nIt is the capital\nof Poland. "], TaskConfig(grader="contains"))
    assert out["answers"] == ["It is the capital\nof Poland."] and out["score"] == 1.0
    assert out["graders"] == {"exact_match": [0.0], "f1": [pytest.approx(2 / 6)], "contains": [1.0]}
    old = TaskConfig(answer_prompt="topic", answer_scope="first_line", grader="contains")
    assert kn.probe_params(old, 4).stop_at_newline is True
    assert kn.grade_outputs(rec, ["\nIt is the\ncapital"], old)["score"] == 0.0  # first line only


def test_contains_grader_matches_whole_words_in_order():
    assert kn.contains_answer("The answer is Subutai and Jebe.", "Subutai and Jebe") == 1.0
    assert kn.contains_answer("Jebe and Subutai", "Subutai and Jebe") == 0.0
    assert kn.contains_answer("silvery", "silver") == 0.0  # words, not substrings
    assert kn.contains_answer("the Otrar", "Otrar") == 1.0
    assert kn.contains_answer("", "Otrar") == 0.0


def test_the_judge_is_not_called_on_an_empty_answer_and_states_the_papers_rules():
    from seal.tasks.judge import JUDGE_PROMPT

    # No url: a call would raise ConfigError; an empty answer is wrong without one.
    assert kn.grade(TaskConfig(grader="judge"), "q", "Paris", "  ") == 0.0
    with pytest.raises(ConfigError):
        kn.grade(TaskConfig(grader="judge"), "q", "Paris", "Paris")
    assert "Do not use any outside knowledge" in JUDGE_PROMPT
    assert "can include additional information, but it must at least fully convey the gold answer" in JUDGE_PROMPT


def test_edit_items_split_as_the_papers_inner_loop():
    assert kn.edit_items("Here are some implications:\n1. A.\n2. B.\n---\n3. C.") == ["1. A.", "2. B.", "3. C."]
    assert kn.edit_items("A fact.\nAnother fact.") == ["A fact.", "Another fact."]
    qa = "What is X?\nAnswer: Y.\nQuestion 2: What is Z?\nAnswer: W."
    assert kn.edit_items(qa) == ["Question 1: What is X?\nAnswer: Y.", "Question 2: What is Z?\nAnswer: W."]


def test_linear_lr_schedule_decays_to_zero_like_hugging_faces():
    assert [lr_factor(s, 4, "linear") for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert lr_factor(3, 4, "constant") == 1.0
    cosine = [lr_factor(s, 4, "cosine") for s in range(4)]  # HF's cosine without warm-up
    assert cosine[0] == 1.0 and abs(cosine[2] - 0.5) < 1e-12 and cosine == sorted(cosine, reverse=True)
    assert load_config(None).inner.lr_schedule == "linear" and load_config(None).mstep.lr_schedule == "linear"


def test_top1_always_keeps_a_passages_best_edit_even_at_zero_reward():
    scores = [{"context": 0, "k": 0, "reward": 0.0, "baseline": 0.0}, {"context": 0, "k": 1, "reward": 0.0,
                                                                       "baseline": 0.0},
              {"context": 1, "k": 0, "reward": 0.2, "baseline": 0.0}, {"context": 1, "k": 1, "reward": 0.6,
                                                                       "baseline": 0.0}]
    kept = filter_scores(scores, FilterConfig(rule="top1_always"))
    assert [(r["context"], r["k"]) for r in kept] == [(0, 0), (1, 1)]  # ties to the lowest k
    assert [(r["context"], r["k"]) for r in filter_scores(scores, FilterConfig(rule="top1"))] == [(1, 1)]


def test_the_training_pool_excludes_the_evaluation_passages(tmp_path):
    recs = paper_records()
    pool = [dict(r) for r in recs] + [{"title": "Other", "context": "Another passage.",
                                            "questions": [{"question": "Which?", "answer": "Another"}]}]
    pool[1] = dict(pool[1], context=pool[1]["context"] + "  ")  # matched after stripping
    data = tmp_path / "pool.json"
    data.write_text(json.dumps(pool))
    evals = tmp_path / "eval.json"
    evals.write_text(json.dumps(recs[:2]))
    cfg = TaskConfig(data=str(data), exclude=[str(evals)])
    left = kn.load_contexts(cfg)
    assert [r["title"] for r in left] == [recs[2]["title"], recs[3]["title"], "Other"]
    with pytest.raises(ConfigError, match="removes every passage"):
        kn.exclude_passages(recs, [str(PAPER)])
    (tmp_path / "bad.json").write_text(json.dumps([{"title": 1}]))
    with pytest.raises(DataError, match="task.exclude"):
        kn.exclude_passages(recs, [str(tmp_path / "bad.json")])


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_passages():
    assert ev.bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    few = [0.0, 1.0, 0.5, 0.25, 0.75]
    lo, hi = ev.bootstrap_ci(few)
    assert lo < 0.5 < hi and ev.bootstrap_ci(few) == (lo, hi)  # seeded
    lo2, hi2 = ev.bootstrap_ci(few * 20)
    assert lo <= lo2 < 0.5 < hi2 <= hi and (hi2 - lo2) < (hi - lo) / 2


def test_passage_means_average_edits_and_fits_per_passage_and_grader():
    def line(p, grades):
        return {"passage": p, "questions": [{"grades": {"f1": g, "contains": g}} for g in grades]}
    means = ev.passage_means([line(0, [1, 0]), line(0, [1, 1]), line(1, [0, 0])])
    assert means["f1"] == {0: 0.75, 1: 0.0} and means["contains"] == means["f1"]


def test_row_specs_and_their_errors():
    rows = ev.row_specs(["a/base_val.json"], ["base", "s3://b/runs/r1@0"], ("http://t/v1", "gpt-4.1"))
    assert [r["kind"] for r in rows] == ["base", "passage", "file", "policy", "policy", "teacher"]
    assert rows[4]["run"] == "s3://b/runs/r1" and rows[4]["round"] == 0
    with pytest.raises(ConfigError, match="--policy"):
        ev.row_specs([], ["r1"], None)


def test_the_world_demo_keeps_the_wording_its_warm_start_learnt():
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs/world-demo.yaml")
    rec = {"title": "Kamak", "context": "Kamak works as a baker."}
    assert kn.context_prompt(rec, cfg.task) == kn.SEAL_PROMPTS["implications"].format(**rec)
    assert kn.context_prompt(rec, cfg.task).startswith("Read the following passage and list the implications")
    assert (cfg.task.answer_prompt, cfg.task.answer_scope) == ("topic", "first_line")
    assert (cfg.inner.lr_schedule, cfg.mstep.lr_schedule, cfg.mstep.batch_size) == ("constant", "constant", 1)
