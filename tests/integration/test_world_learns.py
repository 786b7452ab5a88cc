"""The guard on the project's one proof that SEAL learns: the world demo, scored on its held-out
passages, must still show the loop learning.

The test builds the demo's warm start at its full budget (the loop learns only from a warm start
trained that far: README, "The gain depends on the warm start"), runs the demo's three ReSTEM
rounds and scores the held-out passages with one evaluation seed instead of three (the report's
slow part). It fails when fewer than GUARD_QA_SHARE of the final policy's edits are
question-answer restatements (the loop stopped selecting what teaches: a broken reward, filter,
sampler or M-step leaves the warm start's mix), or when its edits lift held-out accuracy no more
than GUARD_MARGIN above the un-adapted model (they stopped teaching: a broken inner loop).
seal.evaluation.world has the thresholds; bench/world_seeds.py measures their false-alarm rate
(README, "A guard in CI").
"""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_the_world_demo_still_learns(tmp_path):
    from seal.config import load_config
    from seal.evaluation import world as world_report
    from seal.stages.local import run_local
    from seal.store import open_store

    cfg = load_config("configs/world-demo.yaml", [f"store={tmp_path}", "run_id=guard"])
    run_local(cfg)
    result = world_report.evaluate(open_store(cfg.run_uri), seeds=[0], progress=False)
    rows = {r["name"]: r["mean"] for r in result["rows"]}
    last = result["rows"][-1]
    assert last["name"] == "passage + round 3 policy's edits"
    table = ", ".join(f"{name} {mean:.3f}" for name, mean in rows.items())
    qa = last["styles"]["qa"]  # the share of its edits in this style (one evaluation seed)
    assert qa >= world_report.GUARD_QA_SHARE, (
        f"the loop stopped learning: round 3's policy writes {qa:.0%} question-answer edits "
        f"(guard {world_report.GUARD_QA_SHARE:.0%}); {table}")
    lift = last["mean"] - rows["base model (no adaptation)"]
    assert lift > world_report.GUARD_MARGIN, (
        f"round 3's edits no longer teach: {last['mean']:.3f} vs the un-adapted model "
        f"{rows['base model (no adaptation)']:.3f} (guard {world_report.GUARD_MARGIN:+.2f}); {table}")


def test_a_warm_start_that_ends_too_high_says_so(tmp_path, caplog):
    """A warm start whose loss ends above LEARNS_BELOW (here: 5 steps) warns that the loop may not
    learn from it, and how to fix it; the model is still written."""
    from seal.models import warmstart

    spec = warmstart.WarmStartSpec(hidden=64, steps=5, batch=2, row=64)
    with caplog.at_level("WARNING", logger="seal.models.warmstart"):
        stats = warmstart.build(tmp_path / "m", spec, progress=False)
    assert stats["final_loss"] > warmstart.LEARNS_BELOW
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "steps=N" in warned[0] and f"{stats['final_loss']:.3f}" in warned[0]
    assert (tmp_path / "m" / "config.json").exists()
