"""The guard on the project's one proof that SEAL learns: the world demo's pipeline, cut down to its
learning signal, must still beat both baselines on held-out passages.

The test builds the demo's warm start (its full budget: the loop learns only from a warm start
trained that far, README "The gain depends on the warm start"), runs the demo's three ReSTEM
rounds and scores the held-out passages with one evaluation seed instead of three. It fails when
the final policy's edits teach less than GUARD_MARGIN more than the warm-start policy's edits, or
than the passage alone.

GUARD_MARGIN is set from `bench/world_seeds.py --json` (5 warm-start worlds x 3 run seeds, the same
statistic: evaluation seed 0): see README "A guard in CI" for the measured gains and the false-alarm
rate that margin gives (below 1%). A loop that stops learning (a broken filter, M-step or reward)
scores a gain near 0 and fails.
"""

from __future__ import annotations

import pytest

# The smallest gain (accuracy, over 96 held-out questions) a working loop is expected to clear.
GUARD_MARGIN = 0.10


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
    final_name, final = result["rows"][-1]["name"], result["rows"][-1]["mean"]
    assert final_name == "passage + round 3 policy's edits"
    for baseline in ("passage + warm-start policy's edits", "passage only"):
        gain = final - rows[baseline]
        assert gain > GUARD_MARGIN, (
            f"the loop stopped learning: {final_name} {final:.3f} vs {baseline} {rows[baseline]:.3f} "
            f"(gain {gain:+.3f}, guard {GUARD_MARGIN}); table: {rows}")


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
