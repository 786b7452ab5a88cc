"""The world demo's claim over several *run* seeds: ReSTEM's own randomness (which train passages
each round draws, which edits are sampled, the LoRA fits) changes with the run seed; the warm-start
model and the world stay the same (seed 0). Each run is then scored by `seal world-report`'s
evaluation (its own seeds). Prints one line per run seed and the final-policy gains over them.

    OMP_NUM_THREADS=1 python bench/world_seeds.py --seeds 0,1,2        (about 2 minutes per seed)
"""

from __future__ import annotations

import argparse
import statistics

from seal.config import load_config
from seal.evaluation import world as world_report
from seal.stages.local import run_local
from seal.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="run seeds")
    ap.add_argument("--eval-seeds", default="0,1,2", help="evaluation seeds of each run's report")
    ap.add_argument("--config", default="configs/world-demo.yaml")
    args = ap.parse_args()
    eval_seeds = [int(s) for s in args.eval_seeds.split(",")]
    finals, warms, passages = [], [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run_id = "world-demo" if seed == 0 else f"world-demo-seed{seed}"
        cfg = load_config(args.config, [f"seed={seed}", f"run_id={run_id}"])
        run_local(cfg)
        result = world_report.evaluate(open_store(cfg.run_uri), eval_seeds, progress=False)
        rows = {r["name"]: r["mean"] for r in result["rows"]}
        final = result["rows"][-1]["mean"]
        warm, passage = rows["passage + warm-start policy's edits"], rows["passage only"]
        finals.append(final)
        warms.append(warm)
        passages.append(passage)
        print(f"run seed {seed}: " + ", ".join(f"{r['name']} {r['mean']:.3f}" for r in result["rows"]), flush=True)
    gain_w = [f - w for f, w in zip(finals, warms, strict=True)]
    gain_p = [f - p for f, p in zip(finals, passages, strict=True)]
    sd = statistics.stdev if len(finals) > 1 else (lambda _: 0.0)
    print(f"final policy {statistics.fmean(finals):.3f} ± {sd(finals):.3f} over {len(finals)} run seeds")
    print(f"  vs warm-start policy: {statistics.fmean(gain_w):+.3f} ± {sd(gain_w):.3f} "
          f"(higher for {sum(g > 0 for g in gain_w)} of {len(gain_w)})")
    print(f"  vs passage only:      {statistics.fmean(gain_p):+.3f} ± {sd(gain_p):.3f} "
          f"(higher for {sum(g > 0 for g in gain_p)} of {len(gain_p)})")


if __name__ == "__main__":
    main()
