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


def run(world: int, seed: int, passage: float, warm: float, final: float, qa: float = 1.0) -> dict:
    return {"warm_seed": world, "seed": seed, "qa_share": {"passage + warm-start policy's edits": 0.3,
                                                          "passage + round 2 policy's edits": qa}, "scores": {
        "base model (no adaptation)": [0.1, 0.1], "passage only": [passage, passage],
        "passage + warm-start policy's edits": [warm, warm], "passage + round 1 policy's edits": [0.3, 0.3],
        "passage + round 2 policy's edits": [final, final + 0.02]}}


def test_guard_counts_failing_runs_and_estimates_the_tail(capsys):
    bench = load_bench()
    records = [run(w, s, 0.1, 0.2, 0.5 + 0.01 * w + 0.005 * s) for w in range(3) for s in range(2)]
    records.append(run(3, 0, 0.1, 0.2, 0.15))  # 0.05 above the base model (0.1): not above the 0.05 margin
    records.append(run(4, 0, 0.1, 0.2, 0.6, qa=0.4))  # gains fine, but the policy kept mixing styles
    bench.summarize(records, 0.05, 0.6)
    out = capsys.readouterr().out
    assert "runs that would fail: 2 of 8" in out
    assert "question-answer share (guard: >= 0.6): min +0.400" in out
    assert "(higher for 7 of 8)" in out  # over the passage alone: 0.15 > 0.1; over the warm-start edits: 0.15 < 0.2
    assert "over 5 worlds" in out
    # the last round's row is the final policy's, whatever the number of rounds
    assert "final policy 0.4" in out or "final policy 0.5" in out


def test_guard_estimate_is_small_when_every_gain_is_far_above_the_margin(capsys):
    bench = load_bench()
    records = [run(w, s, 0.1, 0.2, 0.6 + 0.01 * ((w * 3 + s) % 4)) for w in range(4) for s in range(3)]
    bench.guard_false_alarms(records, 0.05, 0.6)
    out = capsys.readouterr().out
    assert "runs that would fail: 0 of 12" in out
    estimate = float(out.split("estimated false-alarm rate <= ")[1].split()[0])
    assert estimate < 1e-6


def test_t_cdf_matches_the_t_table():
    bench = load_bench()
    # two-sided 95% points of Student's t (the t table), and the symmetry of the distribution
    for df, t95 in ((1, 12.706), (3, 3.182), (4, 2.776), (14, 2.145), (1000, 1.962)):
        assert abs(bench.t_cdf(-t95, df) - 0.025) < 2e-4
        assert abs(bench.t_cdf(t95, df) - 0.975) < 2e-4
    assert bench.t_cdf(0.0, 5) == 0.5
