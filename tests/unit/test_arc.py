"""Few-shot ARC: augmentations are bijections with correct inverses, the parsers are strict and
never raise, the TTT builder respects its caps, voting maps answers back, data errors are clear."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seal.config import load_config
from seal.errors import ConfigError, DataError
from seal.tasks import arc, get_task
from seal.tasks.arc_augment import DIHEDRAL, TRANSFORMS, invert_perm, random_color_perm, recolor
from seal.tasks.arc_grids import grid_to_text, parse_grid


@st.composite
def grids(draw, max_side=10):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    return [draw(st.lists(st.integers(0, 9), min_size=w, max_size=w)) for _ in range(h)]


def arc_cfg(*overrides):
    return load_config(None, ["task.name=arc", "task.data=builtin:arc-demo", *overrides])


EDIT = {"augmentations": ["basic"], "loss": "outputs", "lr": 1e-4, "epochs": 2}


def edit_text(**changes):
    return json.dumps({**EDIT, **changes})


# --- augmentations ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@settings(max_examples=60, deadline=None)
@given(g=grids())
def test_every_transform_is_injective_with_a_correct_inverse(name, g):
    t = TRANSFORMS[name]
    image = t.forward(g)
    assert parse_grid(grid_to_text(image))[0] == image  # a valid rectangular grid
    assert t.inverse(image) == g  # inverse . forward = id on every grid
    assert t.forward(t.inverse(image)) == image  # forward . inverse = id on the image
    assert g == [list(r) for r in g]  # forward does not mutate its input


@pytest.mark.parametrize("name", DIHEDRAL)
@settings(max_examples=60, deadline=None)
@given(g=grids())
def test_voting_views_are_bijections_of_all_grids(name, g):
    t = TRANSFORMS[name]
    back = t.inverse(g)  # any grid (any model answer) has a preimage
    assert back is not None and t.forward(back) == g
    assert sorted(c for r in t.forward(g) for c in r) == sorted(c for r in g for c in r)


@settings(max_examples=60, deadline=None)
@given(g=grids(), seed=st.integers(0, 2**31 - 1))
def test_color_permutations_are_bijections_that_keep_background(g, seed):
    import random

    perm = random_color_perm(random.Random(seed))
    assert sorted(perm) == list(range(10)) and perm[0] == 0
    assert recolor(recolor(g, perm), invert_perm(perm)) == g


def test_non_image_grids_have_no_preimage():
    assert TRANSFORMS["upscale2"].inverse([[1, 2], [3, 4]]) is None
    assert TRANSFORMS["upscale2"].inverse([[1, 1, 1]]) is None  # odd size
    assert TRANSFORMS["tile_1x2"].inverse([[1, 2, 1, 3]]) is None
    assert TRANSFORMS["rot90+upscale2"].inverse([[1, 1], [1, 2]]) is None
    assert TRANSFORMS["rot90"].forward([[1, 2, 3]]) == [[1], [2], [3]]
    assert TRANSFORMS["anti_transpose"].forward([[1, 2], [3, 4]]) == [[4, 2], [3, 1]]


# --- the answer parser ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(g=grids(max_side=30))
def test_grid_text_round_trips(g):
    assert parse_grid(grid_to_text(g)) == (g, "")
    assert parse_grid("\n\n" + grid_to_text(g) + "\n\nInput:\n1 2\n")[0] == g  # a blank line ends it


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty answer"),
        ("   \n\n", "empty answer"),
        ("[[1, 2], [3, 4]]", "not digits 0-9 separated by single spaces"),
        ("1 2\n3", "row 1 has 1 cells, row 0 has 2"),
        ("1 2 \n3 4", ""),  # surrounding spaces are stripped per line: this one parses
        ("1  2\n3 4", "not digits"),
        ("12 3", "not digits"),
        ("1,2\n3,4", "not digits"),
        ("1 2\nOutput: 3 4", "line 2"),
        ("1 a", "not digits"),
        ("-1 2", "not digits"),
        ("\n".join(["1"] * 31), "31 rows, more than 30"),
        (" ".join(["1"] * 31), "at most 30 columns"),
        ("__import__('os').system('true')", "not digits"),
    ],
)
def test_parser_rejects_malformed_answers_with_a_reason(text, reason):
    grid, why = parse_grid(text)
    if reason:
        assert grid is None and reason in why
    else:
        assert grid == [[1, 2], [3, 4]] and why == ""


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_parser_never_raises(text):
    grid, why = parse_grid(text)
    assert (grid is None) == bool(why)


# --- the self-edit parser ------------------------------------------------------------------------


def test_edit_parses_and_clamps_with_notes():
    a = arc_cfg().task.arc
    e, why, notes = arc.parse_edit(edit_text(augmentations=["chain", "basic", "basic"], lr=0.5, epochs=40), a)
    assert why == "" and e.augmentations == ("basic", "chain")  # canonical order, duplicates dropped
    assert (e.lr, e.epochs, e.loss) == (a.lr_max, a.max_epochs, "outputs")
    assert "lr 0.5 clamped to 0.001" in notes and "epochs 40 clamped to 10" in notes
    e, _, notes = arc.parse_edit(edit_text(lr=1e-9), a)
    assert e.lr == a.lr_min and notes == ["lr 1e-09 clamped to 1e-06"]
    e, _, _ = arc.parse_edit("```json\n" + edit_text(augmentations=[], epochs=3.0) + "\n```\nmore text", a)
    assert e.augmentations == () and e.epochs == 3


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "does not start with a JSON object"),
        ("Sure! " + json.dumps(EDIT), "does not start with a JSON object"),
        ('{"augmentations": ["basic"], "loss": "all"', "not valid JSON"),
        ("[1, 2]", "does not start with a JSON object"),
        (edit_text(extra=1), "unknown key(s) extra"),
        (json.dumps({k: v for k, v in EDIT.items() if k != "lr"}), "missing key(s) lr"),
        (edit_text(augmentations=["rotate"]), "unknown augmentation family 'rotate'"),
        (edit_text(augmentations="basic"), "augmentations must be a list of strings"),
        (edit_text(loss="some"), 'loss must be "all" or "outputs"'),
        (edit_text(lr="1e-4"), "lr must be a positive number"),
        (edit_text(lr=-1), "lr must be a positive number"),
        (edit_text(lr=True), "lr must be a positive number"),
        ('{"augmentations": [], "loss": "all", "lr": NaN, "epochs": 1}', "lr must be a positive number"),
        (edit_text(epochs=1.5), "epochs must be a whole number"),
        (edit_text(epochs=0), "epochs must be at least 1"),
        ('{"augmentations": [], "loss": "all", "lr": 1e-4, "epochs": 1, "lr": 1}', "duplicate key(s) lr"),
        ("{" * 5000, "not valid JSON"),
    ],
)
def test_edit_parser_rejects_with_clear_reasons(text, reason):
    e, why, _ = arc.parse_edit(text, arc_cfg().task.arc)
    assert e is None and reason in why


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=120))
def test_edit_parser_never_raises(text):
    e, why, _ = arc.parse_edit(text, arc_cfg().task.arc)
    assert (e is None) == bool(why)


def test_unparseable_edit_is_skipped_not_crashed():
    cfg = arc_cfg()
    rec = arc.load_contexts(cfg.task)[1]
    job = arc.inner_job(rec, "I would rotate the grids.", cfg.task, cfg.inner)
    assert job.skip.startswith("unparseable edit: ") and job.examples == []


# --- the TTT builder -------------------------------------------------------------------------------


def test_ttt_splits_and_counts():
    cfg = arc_cfg("task.arc.color_permutations=0", "task.arc.leave_two_out_pairs=neighbour")
    rec = arc.load_contexts(cfg.task)[1]  # 5582e5ca: 3 demonstrations
    e, _, _ = arc.parse_edit(edit_text(augmentations=[]), cfg.task.arc)
    ex, stats = arc.build_ttt_examples(rec, e, cfg.task.arc, seed=0)
    assert stats["built"] == len(ex) == 3 + 3  # leave-one-out + leave-two-out (query i, i+1 dropped)
    queries = [x.prompt.rsplit("Input:\n", 1)[1] for x in ex]
    assert sorted(queries) == sorted(2 * [arc.grid_to_text(p["input"]) + "\nOutput:\n" for p in rec["train"]])
    assert [x.prompt.count("Input:") for x in ex].count(2) == 3  # leave-two-out: 1 demonstration + query
    pairs = arc_cfg("task.arc.color_permutations=0").task.arc  # the paper: every second demonstration
    ex, stats = arc.build_ttt_examples(rec, e, pairs, seed=0)
    assert stats["built"] == len(ex) == 3 + 3 * 2
    assert sorted(x.prompt for x in ex if x.prompt.count("Input:") == 2) == sorted(
        arc.puzzle_text([d], q["input"]) for i, q in enumerate(rec["train"])
        for j, d in enumerate(rec["train"]) if j != i)
    e, _, _ = arc.parse_edit(edit_text(augmentations=["basic", "repeat"]), cfg.task.arc)
    ex, stats = arc.build_ttt_examples(rec, e, cfg.task.arc, seed=0)
    assert stats["built"] == 6 * (1 + 7 + 3)
    cfg2 = arc_cfg("task.arc.leave_two_out=false", "task.arc.color_permutations=2")
    ex, stats = arc.build_ttt_examples(rec, e, cfg2.task.arc, seed=0)
    assert stats["built"] == 3 * 11 * 3
    # outputs-only loss: the answer is the completion and the prompt ends where answers start
    assert all(x.prompt.endswith("Output:\n") and parse_grid(x.text)[0] for x in ex)
    e_all, _, _ = arc.parse_edit(edit_text(loss="all"), cfg.task.arc)
    ex, _ = arc.build_ttt_examples(rec, e_all, cfg.task.arc, seed=0)
    assert all(x.prompt == "" and x.text.startswith(arc.PUZZLE_HEADER) for x in ex)


def test_ttt_builder_respects_its_caps():
    cfg = arc_cfg("task.arc.max_examples=7", "task.arc.max_grid_side=5", "task.arc.leave_two_out_pairs=neighbour")
    rec = arc.load_contexts(cfg.task)[1]  # 5582e5ca: 3x3 grids: up-scaled 2x they are 6x6, past the side cap
    e, _, _ = arc.parse_edit(edit_text(augmentations=["size", "chain", "repeat"]), cfg.task.arc)
    ex, stats = arc.build_ttt_examples(rec, e, cfg.task.arc, seed=1)
    assert stats["used"] == len(ex) == 7 and stats["built"] > 7
    assert stats["dropped_by_size"] == 6 * (3 + 7 + 3)  # every size/chain/repeat view is too big
    for x in ex:
        shown = [g for g in x.prompt.split("\n\n") if g]  # no grid in any example exceeds the cap
        assert all(len(line.split(" ")) <= 5 for block in shown for line in block.splitlines()
                   if line and line[0].isdigit())
    again, _ = arc.build_ttt_examples(rec, e, cfg.task.arc, seed=1)
    assert again == ex  # seeded: the same edit builds the same data
    # leave-one-out puzzles hold 3 pairs of 3x3 grids (54 cells), leave-two-out ones 2 pairs (36)
    cells = arc_cfg("task.arc.max_example_cells=40", "task.arc.leave_two_out_pairs=neighbour").task.arc
    e0, _, _ = arc.parse_edit(edit_text(augmentations=[]), cells)
    ex, stats = arc.build_ttt_examples(rec, e0, cells, seed=0)
    # leave-two-out only, and no colour copies: the edit chose no augmentation family (the paper)
    assert stats["dropped_by_size"] == 3 and stats["built"] == len(ex) == 3
    assert all(x.prompt.count("Input:") == 2 for x in ex)


def test_compute_cap_refuses_expensive_edits():
    cfg = arc_cfg("inner.batch_size=2", "task.arc.compute_cap=375", "task.arc.leave_two_out_pairs=neighbour")
    rec = arc.load_contexts(cfg.task)[0]  # 44f52bb0: 6 demonstrations -> 36 puzzles per view
    job = arc.inner_job(rec, edit_text(augmentations=["basic"], epochs=4), cfg.task, cfg.inner)
    # 12 puzzles x 8 views x 2 (colour copy) = 192 examples (under the 250 kept); 4 epochs / batch 2
    # = 384 steps > 375
    assert job.skip.startswith("over the compute cap: 4 epochs x 192 examples / batch 2 = 384 steps")
    assert job.info["ttt"]["built"] == 192 and job.examples == []
    assert arc.inner_job(rec, edit_text(augmentations=["basic"], epochs=3), cfg.task, cfg.inner).skip == ""
    ok = arc.inner_job(rec, edit_text(augmentations=[], epochs=3, lr=5e-4), cfg.task, cfg.inner)
    assert ok.skip == "" and len(ok.examples) == 12  # no augmentation chosen: no colour copies
    assert (ok.lora.lr, ok.lora.epochs, ok.lora.rank) == (5e-4, 3, cfg.inner.rank)
    assert cfg.inner.epochs == 10  # the run's settings are untouched


# --- voting and grading ----------------------------------------------------------------------------


def test_flat_probes_and_vote_map_answers_back():
    cfg = arc_cfg("task.arc.voting=flat")
    rec = arc.load_contexts(cfg.task)[2]  # 6150a2bd: rotate by 180
    views = cfg.task.arc.vote_transforms
    sol = rec["tests"][0]["solution"]
    prompts = arc.probe_prompts(rec, cfg.task)
    assert len(prompts) == len(views) == 8 and all(p.endswith("Output:\n") for p in prompts)
    right = [grid_to_text(TRANSFORMS[v].forward(sol)) for v in views]
    assert arc.grade_outputs(rec, right, cfg.task)["score"] == 1.0
    wrong = grid_to_text([[1]])
    # two views right, five agree on a wrong grid, one garbled: right is 2nd by votes -> pass@2 only
    outs = [wrong] * 5 + right[5:7] + ["no grid here"]
    res = arc.grade_outputs(rec, outs, cfg.task)
    assert (res["score"], res["pass1"], res["votes"], res["parsed"]) == (1.0, 0.0, [[5, 2]], [7])
    assert len(res["unparsed"]) == 1 and res["unparsed"][0].startswith("anti_transpose:")
    one = arc_cfg("task.arc.voting=flat", "task.arc.attempts=1")
    assert arc.grade_outputs(rec, outs, one.task)["score"] == 0.0
    # one view's answer is mapped back through that view's inverse: right only in its own orientation
    only_rot90 = ["?"] + [right[1]] + ["?"] * 6
    assert arc.grade_outputs(rec, only_rot90, cfg.task)["score"] == 1.0
    unrotated = ["?"] + [right[0]] + ["?"] * 6
    assert arc.grade_outputs(rec, unrotated, cfg.task)["score"] == 0.0
    assert arc.grade_outputs(rec, ["x"] * 8, cfg.task)["score"] == 0.0


# --- data loading ----------------------------------------------------------------------------------


def test_builtin_contexts_one_per_task_or_per_test_input():
    cfg = arc_cfg()
    recs = get_task("arc").load_contexts(cfg.task)
    assert [r["id"] for r in recs] == ["44f52bb0", "5582e5ca", "6150a2bd"]  # the paper: a context is a task
    assert [t["solution"] for t in recs[0]["tests"]] == [[[1]], [[7]]]
    assert "Self-edit:" in arc.context_prompt(recs[0], cfg.task)
    per_input = arc.load_contexts(arc_cfg("task.arc.context=test_input").task)
    assert [r["id"] for r in per_input] == ["44f52bb0/0", "44f52bb0/1", "5582e5ca/0", "6150a2bd/0"]
    assert per_input[1]["tests"] == [recs[0]["tests"][1]]
    only = arc.load_contexts(arc_cfg("task.arc.tasks=[6150a2bd, 44f52bb0]").task)
    assert [r["id"] for r in only] == ["44f52bb0", "6150a2bd"]
    with pytest.raises(ConfigError, match="task.arc.tasks: nope not in builtin:arc-demo"):
        arc.load_contexts(arc_cfg("task.arc.tasks=[nope]").task)


def _write(tmp_path, ch, so):
    (tmp_path / "c.json").write_text(json.dumps(ch))
    (tmp_path / "s.json").write_text(json.dumps(so))
    return [f"task.data={tmp_path / 'c.json'}", f"task.arc.solutions={tmp_path / 's.json'}"]


GOOD = {"t1": {"train": [{"input": [[1]], "output": [[2]]}, {"input": [[3]], "output": [[4]]}],
               "test": [{"input": [[5]]}]}}


@pytest.mark.parametrize(
    "challenges, solutions, err, needle",
    [
        (GOOD, {"t1": [[[6]]]}, None, ""),
        (GOOD, {}, DataError, "task t1: the solutions file needs a list of 1 grid(s)"),
        ({"t1": {**GOOD["t1"], "train": GOOD["t1"]["train"][:1]}}, {"t1": [[[6]]]}, DataError,
         "1 demonstrations: test-time training needs at least 2"),
        ({"t1": {**GOOD["t1"], "test": [{"input": [[1, 2], [3]]}]}}, {"t1": [[[6]]]}, DataError,
         "test[0].input: row 1 has 1 cells"),
        ({"t1": {**GOOD["t1"], "train": [{"input": [[10]], "output": [[1]]}] * 2}}, {"t1": [[[6]]]}, DataError,
         "train[0].input: row 0 has a cell 10"),
        (GOOD, {"t1": [[[True]]]}, DataError, "solution 0: row 0 has a cell True"),
        ([], {}, DataError, "expected a JSON object"),
    ],
)
def test_task_files_are_checked(tmp_path, challenges, solutions, err, needle):
    cfg = load_config(None, ["task.name=arc", *_write(tmp_path, challenges, solutions)])
    if err is None:
        assert arc.load_contexts(cfg.task)[0]["tests"][0]["solution"] == [[6]]
        return
    with pytest.raises(err) as e:
        arc.load_contexts(cfg.task)
    assert needle in str(e.value) and e.value.exit_code == 65


def test_missing_and_mismatched_sources(tmp_path):
    with pytest.raises(ConfigError, match="task.arc.solutions is empty"):
        arc.load_contexts(load_config(None, ["task.name=arc", "task.data=x.json"]).task)
    with pytest.raises(ConfigError, match="file not found: nope.json"):
        arc.load_contexts(load_config(None, ["task.name=arc", "task.data=nope.json",
                                             "task.arc.solutions=s.json"]).task)
    with pytest.raises(ConfigError, match="must be empty with a builtin"):
        arc.load_contexts(arc_cfg("task.arc.solutions=s.json").task)
    with pytest.raises(ConfigError, match="no such built-in ARC task set"):
        arc.load_contexts(load_config(None, ["task.name=arc", "task.data=builtin:nope"]).task)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        arc.load_contexts(load_config(None, ["task.name=arc", f"task.data={tmp_path / 'bad.json'}",
                                             f"task.arc.solutions={tmp_path / 'bad.json'}"]).task)


def test_shared_reference_task_files_load():
    """The paper's 12 training / 10 evaluation tasks load (when ../shared/data is beside the checkout)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "arc"
    if not root.is_dir():
        pytest.skip("../shared/data/arc not present")
    for split, n in (("training", 12), ("evaluation", 10)):
        tag = "training_set" if split == "training" else "eval_set"
        cfg = load_config(None, [
            "task.name=arc", f"task.data={root}/arc-agi_{split}_challenges_filtered_1B_{tag}.json",
            f"task.arc.solutions={root}/arc-agi_{split}_solutions_filtered_1B_{tag}.json"])
        recs = arc.load_contexts(cfg.task)
        assert len({r["task"] for r in recs}) == n


def test_paper_arc_config_matches_design():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "arc-llama-3.2-1b.yaml"
    cfg = load_config(path)
    assert cfg.model.base == "meta-llama/Llama-3.2-1B-Instruct" and cfg.task.name == "arc"
    assert (cfg.inner.rank, cfg.inner.alpha, cfg.inner.batch_size) == (128, 16, 2)
    assert cfg.inner.target_modules == ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    assert cfg.edits_per_context == 15 and cfg.task.arc.compute_cap == 375
    assert (cfg.filter.rule, cfg.filter.threshold) == ("threshold", 1.0)
    assert (cfg.mstep.rank, cfg.mstep.alpha, cfg.mstep.epochs, cfg.mstep.lr) == (16, 16, 8, 5e-5)
    assert "training_challenges" in cfg.task.data and "training_solutions" in cfg.task.arc.solutions
    # the reference code's few-shot settings (seal/tasks/arc.py lists where they differ)
    assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens) == (0.8, 1.0, 128)
    a = cfg.task.arc
    assert (a.max_examples, a.cap_on, a.voting, a.chat, a.context, a.attempts) == (250, "used", "paper", "auto",
                                                                                 "task", 2)
    assert (a.leave_two_out, a.leave_two_out_pairs, a.color_permute_unaugmented) == (True, "all", False)
    assert len(a.tasks) == cfg.contexts_per_round == 11 and "8e1813be" not in a.tasks
