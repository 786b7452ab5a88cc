"""The world end to end: a cut-down warm start, ReSTEM rounds and the held-out report; the report's fits
batched and sequential."""

from __future__ import annotations

import pytest

from seal.tasks import knowledge


@pytest.mark.slow
def test_cut_down_world_pipeline_produces_every_row(tmp_path):
    """Warm start (a few steps), one ReSTEM round, and the held-out table on 2 passages x 2 seeds."""
    from seal.config import load_config
    from seal.evaluation import world as world_report
    from seal.stages.local import run_local
    from seal.store import open_store

    base = "world:seed=0,hidden=64,layers=2,steps=20,batch=4,row=96"
    cfg = load_config("configs/world-demo.yaml", [
        f"store={tmp_path}", "run_id=w", "rounds=1", "contexts_per_round=2", "edits_per_context=2",
        f"model.base={base}", "sampling.max_new_tokens=16", "inner.epochs=1",
        "mstep.epochs=1", "filter.min_reward=-1",
    ])
    rows = run_local(cfg)
    assert len(rows) == 1
    result = world_report.evaluate(open_store(cfg.run_uri), seeds=[0, 1], limit=2, progress=False)
    names = [r["name"] for r in result["rows"]]
    assert names == ["base model (no adaptation)", "passage only", "passage + warm-start policy's edits",
                     "passage + round 1 policy's edits"]
    for row in result["rows"]:
        assert len(row["scores"]) == 2 and 0.0 <= row["mean"] <= 1.0
    text = world_report.table(result)
    assert "final policy vs passage only" in text
    png = world_report.plot(result, tmp_path / "w.png")
    assert png.stat().st_size > 1000


def test_report_fits_batched_answer_like_sequential_fits(monkeypatch):
    """The report's batched fits (the default) give the answers the sequential peft fits give."""
    from seal.config import load_config
    from seal.evaluation import world as world_report
    from seal.models.loading import choose_placement, load_model, load_tokenizer

    base = "world:seed=0,hidden=64,layers=2,steps=20,batch=4,row=96"
    answers: dict[str, list[list[str]]] = {}
    grade = knowledge.grade_outputs
    for batched in ("false", "true"):
        cfg = load_config("configs/world-demo.yaml", [f"model.base={base}", "inner.epochs=2",
                                                      f"inner.batched={batched}"])
        records = knowledge.load_records(world_report.heldout_source(cfg.task.data))[:3]
        model = load_model(base, choose_placement("cpu", "float32"))
        seen = answers.setdefault(batched, [])
        monkeypatch.setattr(knowledge, "grade_outputs",
                            lambda rec, out, task_cfg, seen=seen: seen.append(out) or grade(rec, out, task_cfg))
        scores = world_report.incorporate(model, load_tokenizer(base), records, None, cfg, 0, True)
        assert len(scores) == 3
    assert len(answers["true"]) == 3
    assert len({tuple(out) for out in answers["true"]}) > 1  # the answers depend on each passage's fit
    assert answers["true"] == answers["false"]


@pytest.mark.slow
def test_world_seeds_bench_runs_a_grid_and_saves_what_the_guard_is_set_from(tmp_path, monkeypatch, capsys):
    """bench/world_seeds.py end to end on a cut-down world: a run, its report, the --json record
    (scores per evaluation seed, question-answer shares), and --summarize reading it back."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("world_seeds", root / "bench/world_seeds.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.chdir(tmp_path)  # seal run writes its rewards plot into the working directory
    out = tmp_path / "grid.json"
    sets = [f"store={tmp_path}/runs", "model.base=world:seed=0,hidden=64,layers=2,steps=20,batch=4,row=96",
            "rounds=1", "contexts_per_round=2", "edits_per_context=2", "sampling.max_new_tokens=16",
            "inner.epochs=1", "mstep.epochs=1", "filter.min_reward=-1"]
    argv = ["world_seeds.py", "--config", str(root / "configs/world-demo.yaml"), "--warm-seeds", "0,1",
            "--seeds", "0", "--eval-seeds", "0", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv + [a for s in sets for a in ("--set", s)])
    bench.main()
    runs = json.loads(out.read_text())["runs"]
    assert [(r["warm_seed"], r["seed"]) for r in runs] == [(0, 0), (1, 0)]
    for r in runs:
        assert list(r["scores"])[-1] == "passage + round 1 policy's edits"
        assert all(len(v) == 1 and 0.0 <= v[0] <= 1.0 for v in r["scores"].values())
        assert set(r["qa_share"]) == {"passage + warm-start policy's edits", "passage + round 1 policy's edits"}
        assert r["warm_start_loss"] > 0
    first = capsys.readouterr().out
    assert "over 2 worlds" in first
    monkeypatch.setattr(sys, "argv", ["world_seeds.py", "--summarize", str(out)])
    bench.main()
    again = capsys.readouterr().out
    assert again.splitlines()[0] == [ln for ln in first.splitlines() if ln.startswith("final policy ")][0]
