"""bench/world_seeds.py's summary: the gains over both baselines and the CI guard's false-alarm
estimate, on runs whose scores are made up here (the real grid is the bench's own run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("world_seeds", ROOT / "bench/world_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(world: int, seed: int, passage: float, warm: float, final: float) -> dict:
    return {"warm_seed": world, "seed": seed, "scores": {
        "base model (no adaptation)": [0.1, 0.1], "passage only": [passage, passage],
        "passage + warm-start policy's edits": [warm, warm], "passage + round 1 policy's edits": [0.3, 0.3],
        "passage + round 2 policy's edits": [final, final + 0.02]}}


def test_guard_counts_failing_runs_and_estimates_the_tail(capsys):
    bench = load_bench()
    records = [run(w, s, 0.1, 0.2, 0.5 + 0.01 * w + 0.005 * s) for w in range(3) for s in range(2)]
    records.append(run(3, 0, 0.1, 0.2, 0.25))  # gain over warm-start edits 0.05: below the 0.10 margin
    bench.summarize(records, 0.10)
    out = capsys.readouterr().out
    assert "runs that would fail: 1 of 7" in out
    assert "(higher for 7 of 7)" in out  # every gain is positive, one is small
    assert "over 4 worlds" in out
    # the last round's row is the final policy's, whatever the number of rounds
    assert "final policy 0.4" in out or "final policy 0.5" in out


def test_guard_estimate_is_small_when_every_gain_is_far_above_the_margin(capsys):
    bench = load_bench()
    records = [run(w, s, 0.1, 0.2, 0.6 + 0.01 * ((w * 3 + s) % 4)) for w in range(4) for s in range(3)]
    bench.guard_false_alarms(records, 0.10)
    out = capsys.readouterr().out
    assert "runs that would fail: 0 of 12" in out
    estimate = float(out.rsplit("<= ", 1)[1])
    assert estimate < 1e-6
