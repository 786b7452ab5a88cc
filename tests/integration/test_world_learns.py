"""The guard on the project's one proof that SEAL learns: the world demo, scored on its held-out
passages, must still show the loop learning.

The test builds the demo's warm start at its full budget (the loop learns only from a warm start
trained that far: README, "The gain depends on the warm start"), runs the demo's three ReSTEM
rounds and scores the held-out passages with one evaluation seed instead of three (the report's
slow part). It fails when the final policy's edits teach no more than GUARD_MARGIN over the
warm-start policy's edits or over the passage alone, or when fewer than GUARD_QA_SHARE of them
are question-answer restatements (seal.evaluation.world: the thresholds and why).

A working loop clears both by far; the false-alarm rate of these thresholds is measured by
`bench/world_seeds.py` (README, "A guard in CI"). A loop that stops learning (a broken reward,
filter, sampler or M-step) keeps the warm start's mix of styles and gains about nothing.
"""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_restem_beats_both_baselines_on_held_out_passages(tmp_path):
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
    for baseline in ("passage + warm-start policy's edits", "passage only"):
        gain = last["mean"] - rows[baseline]
        assert gain > world_report.GUARD_MARGIN, (
            f"the loop stopped learning: round 3's edits {last['mean']:.3f} vs {baseline} {rows[baseline]:.3f} "
            f"(gain {gain:+.3f}, guard {world_report.GUARD_MARGIN}); {table}")
    qa = last["styles"][0]["qa"]
    assert qa >= world_report.GUARD_QA_SHARE, (
        f"the loop stopped learning: round 3's policy writes {qa:.0%} question-answer edits "
        f"(guard {world_report.GUARD_QA_SHARE:.0%}); {table}")


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
