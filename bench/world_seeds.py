"""The world demo's claim over several *run* seeds and *warm-start* seeds. ReSTEM's own randomness
(which train passages each round draws, which edits are sampled, the LoRA fits) changes with the
run seed. The warm-start seed is `model.base: world:seed=W`: the world (its people and passages,
hence the held-out set) and the warm-start model trained on it (a few minutes per new W, then
cached). Each run is scored by `seal world-report`'s evaluation (its own seeds). Prints one line per
(warm-start seed, run seed) and the final-policy gains over all of them.

    OMP_NUM_THREADS=1 python bench/world_seeds.py --seeds 0,1,2                  (about 2 minutes per seed)
    OMP_NUM_THREADS=2 python bench/world_seeds.py --warm-seeds 0,1,2 --seeds 0   (a warm start each)
"""

from __future__ import annotations

import argparse
import statistics

from seal.config import load_config
from seal.evaluation import world as world_report
from seal.report import mean_ci95
from seal.stages.local import run_local
from seal.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="run seeds")
    ap.add_argument("--warm-seeds", default="0", help="warm-start seeds (model.base world:seed=W)")
    ap.add_argument("--eval-seeds", default="0,1,2", help="evaluation seeds of each run's report")
    ap.add_argument("--config", default="configs/world-demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides for every run, e.g. --set inner.batched=false --set store=/tmp/seq")
    args = ap.parse_args()
    eval_seeds = [int(s) for s in args.eval_seeds.split(",")]
    finals, warms, passages = [], [], []
    base = load_config(args.config, args.overrides)
    runs = [(w, s) for w in _ints(args.warm_seeds) for s in _ints(args.seeds)]
    for warm_seed, seed in runs:
        run_id = "world-demo" + (f"-warm{warm_seed}" if warm_seed else "") + (f"-seed{seed}" if seed else "")
        # the world's passages (task.data, and the report's held-out split) come from the same seed
        cfg = load_config(args.config, [*args.overrides, f"seed={seed}", f"run_id={run_id}",
                                        f"model.base={_with_seed(base.model.base, warm_seed)}",
                                        f"task.data={_with_seed(base.task.data, warm_seed)}"])
        run_local(cfg)
        result = world_report.evaluate(open_store(cfg.run_uri), eval_seeds, progress=False)
        rows = {r["name"]: r["mean"] for r in result["rows"]}
        final = result["rows"][-1]["mean"]
        warm, passage = rows["passage + warm-start policy's edits"], rows["passage only"]
        finals.append(final)
        warms.append(warm)
        passages.append(passage)
        table = ", ".join(f"{r['name']} {r['mean']:.3f}" for r in result["rows"])
        print(f"warm-start seed {warm_seed}, run seed {seed}: {table}", flush=True)
    gain_w = [f - w for f, w in zip(finals, warms, strict=True)]
    gain_p = [f - p for f, p in zip(finals, passages, strict=True)]
    sd = statistics.stdev if len(finals) > 1 else (lambda _: 0.0)
    print(f"final policy {statistics.fmean(finals):.3f} ± {sd(finals):.3f} over {len(finals)} runs")
    for name, gains in (("vs warm-start policy:", gain_w), ("vs passage only:     ", gain_p)):
        mean, low, high = mean_ci95(gains)
        print(f"  {name} {mean:+.3f} ± {sd(gains):.3f}, 95% CI [{low:+.3f}, {high:+.3f}] over runs "
              f"(higher for {sum(g > 0 for g in gains)} of {len(gains)})")
        worlds = sorted({w for w, _ in runs})
        if len(worlds) > 1:  # run seeds share their world's warm start: the world is the honest unit
            per_world = [statistics.fmean(g for (w, _), g in zip(runs, gains, strict=True) if w == world)
                         for world in worlds]
            mean, low, high = mean_ci95(per_world)
            print(f"  {' ' * len(name)} {mean:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}] over {len(worlds)} worlds "
                  f"(higher for {sum(g > 0 for g in per_world)} of {len(worlds)})")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _with_seed(spec: str, seed: int) -> str:
    """'world:seed=0,split=train' -> 'world:seed=S,split=train' (seed= added when the spec has none)."""
    head, _, body = spec.partition(":")
    items = [i for i in body.split(",") if i and not i.startswith("seed=")]
    return f"{head}:" + ",".join([f"seed={seed}", *items])


if __name__ == "__main__":
    main()
