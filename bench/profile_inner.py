"""Where the batched inner loop's time goes: torch.profiler over `seal.inner.multilora.fit_jobs`
on the bench's fits (bench/inner_loop.py's candidates and settings), broken down per training
pass into the parts of a pass and the kinds of work inside them.

Phases (each wrapped in a torch.profiler.record_function by this script, not by seal):
  schedule   choosing the pass's adapters and building its batch (pick_adapters, collate, copy)
  forward    the model's forward pass        loss   the per-adapter cross-entropy (packed
             passes: with building the packed row and its index maps)
  backward   autograd                        optimizer  the stacked AdamW step
  sync       the pass's one device->host copy of the losses
and inside them, by operator: base matmuls, LoRA matmuls (bmm), gathers/scatters of adapter
weights and rows (index, index_add, index_put, index_copy), attention, other tensor ops, and
Python (wall time in a phase that no operator accounts for). Padding's share is the share of
padded positions among the positions computed. Beside the unprofiled fit_jobs it times the same
packed passes through the frozen base alone (`frozen_floor`: no adapters, no optimizer), so the
trainer's own cost shows as a multiple of the model's. Not run by CI. Example (the figures in
bench/README.md):

    OMP_NUM_THREADS=2 .venv/bin/python bench/profile_inner.py --candidates 8 --max-batch 8
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PHASES = ("schedule", "forward", "loss", "backward", "optimizer", "sync")
KINDS = {  # operator (or autograd node) name -> kind; the innermost match below a phase wins
    "aten::bmm": "LoRA matmuls", "BmmBackward0": "LoRA matmuls",
    "aten::index": "gathers", "IndexBackward0": "gathers", "aten::index_add_": "gathers",
    "aten::index_put_": "gathers", "aten::index_copy_": "gathers", "aten::index_select": "gathers",
    "aten::index_add": "gathers", "aten::_index_put_impl_": "gathers", "aten::embedding": "gathers",
    "EmbeddingBackward0": "gathers", "aten::embedding_dense_backward": "gathers",
    "aten::linear": "base matmuls", "aten::addmm": "base matmuls", "aten::mm": "base matmuls",
    "aten::matmul": "base matmuls", "AddmmBackward0": "base matmuls", "MmBackward0": "base matmuls",
    "aten::scaled_dot_product_attention": "attention", "ScaledDotProductAttentionMathBackward0": "attention",
    "ScaledDotProductFlashAttentionForCpuBackward0": "attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
}


def kind_of(ev) -> str:
    e = ev
    while e is not None and e.name not in PHASES:
        if e.name in KINDS:
            return KINDS[e.name]
        if "Attention" in e.name or "attention" in e.name:
            return "attention"
        e = e.cpu_parent
    return "other ops"


def phase_of(ev) -> str | None:
    e = ev
    while e is not None:
        if e.name in PHASES:
            return e.name
        e = e.cpu_parent
    return None


def instrument(multilora) -> dict:
    """Wrap the trainer's parts in record_function ranges (this process only)."""
    import torch
    from torch.profiler import record_function

    counts = {"passes": 0, "tokens": 0, "positions": 0}
    orig = {name: getattr(multilora, name) for name in ("pick_adapters", "collate", "_per_adapter_loss")}

    def ranged(fn, phase: str):
        """fn, run inside a `phase` range (a plain function: as a class attribute it is a method)"""
        def run(*a, **k):
            with record_function(phase):
                return fn(*a, **k)
        return run

    def pick(*a, **k):
        counts["passes"] += 1  # padded passes
        with record_function("schedule"):
            return orig["pick_adapters"](*a, **k)

    def collate(rows, pad_id, *a, **k):
        with record_function("schedule"):
            out = orig["collate"](rows, pad_id, *a, **k)
        counts["tokens"] += sum(len(ids) for ids, _ in rows)
        counts["positions"] += out["input_ids"].numel()
        return out

    multilora.pick_adapters, multilora.collate = pick, collate
    multilora._per_adapter_loss = ranged(orig["_per_adapter_loss"], "loss")
    if hasattr(multilora, "_packed_losses"):  # packed passes: building the packed row, forward and loss
        packed = multilora._packed_losses

        def packed_losses(model, multi, rows, *a, **k):
            counts["passes"] += 1
            counts["tokens"] += sum(len(ids) for ids, _ in rows)
            counts["positions"] += sum(len(ids) for ids, _ in rows)
            with record_function("loss"):
                return packed(model, multi, rows, *a, **k)

        multilora._packed_losses = packed_losses
    opt_cls = multilora._StackedAdamW
    opt_cls.step, opt_cls.zero_grad = ranged(opt_cls.step, "optimizer"), ranged(opt_cls.zero_grad, "optimizer")
    torch.Tensor.backward = ranged(torch.Tensor.backward, "backward")
    torch.Tensor.tolist = ranged(torch.Tensor.tolist, "sync")
    return counts


def frozen_floor(model, tok, jobs, max_length: int) -> float:
    """Seconds for the packed passes train_many runs on `jobs` (every adapter's next batch each
    pass), through the frozen base alone: the forward, the loss at the labelled positions and a
    backward to the inputs (the gradient path the LoRA layers open), no adapters and no
    optimizer. What the trainer would take if its own parts cost nothing."""
    import torch
    import torch.nn.functional as F

    from seal.inner import multilora
    from seal.inner.train import IGNORE, encode, schedule

    rows = [[r for r in (encode(tok, ex, max_length) for ex in j.examples) if any(x != IGNORE for x in r[1])]
            for j in jobs]
    plans = [schedule(len(r), j.lora, j.seed) for r, j in zip(rows, jobs, strict=True)]
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    before = model.config._attn_implementation
    model.set_attn_implementation(multilora.PACKED_ATTENTION)
    opened = model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.detach().requires_grad_(True))
    device = next(model.parameters()).device
    pos = [0] * len(jobs)
    t0 = time.perf_counter()
    try:
        while True:
            batch = []
            for i in range(len(jobs)):
                if pos[i] < len(plans[i]):
                    batch += [rows[i][r] for r in plans[i][pos[i]]]
                    pos[i] += 1
            if not batch:
                break
            pack = multilora.Packing([len(ids) for ids, _ in batch], device)
            shifted = torch.tensor([t for _, lab in batch for t in lab[1:] + [IGNORE]], device=device)
            keep = shifted != IGNORE
            head = model.get_output_embeddings().register_forward_pre_hook(
                lambda m, a, keep=keep: (a[0][:, keep], *a[1:]))
            try:
                logits = multilora._packed_forward(model, pack, [ids for ids, _ in batch])
            finally:
                head.remove()
            F.cross_entropy(logits.float(), shifted[keep]).backward()
        took = time.perf_counter() - t0
    finally:
        opened.remove()
        model.set_attn_implementation(before)
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return took


def main() -> None:
    from inner_loop import candidates, load, make_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny:hidden=256,layers=4,seed=0")
    p.add_argument("--device", default="auto")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--fits", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--answer-tokens", type=int, default=64)
    p.add_argument("--memory-budget-mb", type=int, default=0)
    p.add_argument("--score-backend", default="transformers")
    p.add_argument("--top", type=int, default=25, help="how many of the largest parts to list")
    p.add_argument("--trace", default="", help="also write a Chrome trace here")
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from seal.inner import multilora
    from seal.models.loading import resolve_model
    from seal.seeds import derive_seed
    from seal.tasks import get_task

    cfg = make_config(args)
    resolve_model(cfg.model.base)
    task = get_task("knowledge")
    records = task.load_contexts(cfg.task)
    model, tok = load(cfg)
    jobs = []
    for c in candidates(records, args.candidates):
        job = task.inner_job(records[c.context], c.text, cfg.task, cfg.inner)
        jobs += [multilora.FitJob(list(job.examples), job.lora, derive_seed(cfg.seed, "fit", 0, c.context, c.k, f))
                 for f in range(args.fits)]

    jobs = jobs[: args.max_batch]  # one batch of B fits: a whole train_many call
    multilora.fit_jobs(model, tok, jobs, cfg.inner, cfg.model.max_length)  # warm up
    packed = multilora.packing_works(model)
    plains, floors = [], []
    for _ in range(3):  # alternating, medians: the machine's noise hits both alike
        t0 = time.perf_counter()
        multilora.fit_jobs(model, tok, jobs, cfg.inner, cfg.model.max_length)
        plains.append(time.perf_counter() - t0)
        if packed:
            floors.append(frozen_floor(model, tok, jobs, cfg.model.max_length))
    plain = sorted(plains)[1]

    counts = instrument(multilora)
    # The model's forward is the one call of the model in a pass: wrap it where train_many calls it.
    forward = type(model).forward

    def fwd(self, *a, **k):
        with record_function("forward"):
            return forward(self, *a, **k)

    type(model).forward = fwd
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        multilora.fit_jobs(model, tok, jobs, cfg.inner, cfg.model.max_length)
        profiled = time.perf_counter() - t0
    type(model).forward = forward
    if args.trace:
        prof.export_chrome_trace(args.trace)

    phase_wall: dict[str, float] = defaultdict(float)
    by: dict[tuple[str, str], float] = defaultdict(float)
    events = prof.events()  # built once: walking it is the slow part
    for ev in events:
        if ev.name in PHASES:
            # a phase's own wall time: a range nested in another phase (the forward inside a
            # packed pass's loss) counts for itself, not for the one around it
            phase_wall[ev.name] += ev.cpu_time_total
            outer = phase_of(ev.cpu_parent)
            if outer is not None:
                phase_wall[outer] -= ev.cpu_time_total
            continue
        ph = phase_of(ev)
        if ph is not None:
            by[(ph, kind_of(ev))] += ev.self_cpu_time_total
    n = counts["passes"]
    total = sum(phase_wall.values())
    print(f"model {args.model}: {len(jobs)} fits ({args.candidates} candidates x {args.fits}), B={args.max_batch}, "
          f"{args.epochs} epochs, batch {args.batch_size}, rank {args.rank}; torch threads {torch.get_num_threads()}")
    print(f"fit_jobs: {plain:.2f} s unprofiled, {profiled:.2f} s profiled; {n} passes, "
          f"{1e3 * plain / n:.2f} ms per pass unprofiled; {counts['tokens']} tokens in {counts['positions']} "
          f"positions: padding {1 - counts['tokens'] / counts['positions']:.1%} of the positions computed")
    if floors:
        floor = sorted(floors)[1]
        print(f"the same {n} packed passes through the frozen base alone (forward, loss, backward to the "
              f"inputs; no adapters, no optimizer): {floor:.2f} s, {1e3 * floor / n:.2f} ms per pass; the trainer "
              f"takes {plain / floor:.2f}x that (medians of 3, alternating)")
    kinds = ["base matmuls", "LoRA matmuls", "gathers", "attention", "other ops"]
    print(f"\nper pass, ms (profiled; phases cover {total / 1e6 / profiled:.0%} of the profiled wall time):")
    print(f"{'phase':<10} {'total':>7} {'share':>6} " + " ".join(f"{k:>13}" for k in kinds) + f" {'Python':>8}")
    for ph in PHASES:
        wall = phase_wall.get(ph, 0.0)
        ops = {k: by.get((ph, k), 0.0) for k in kinds}
        py = max(0.0, wall - sum(ops.values()))
        print(f"{ph:<10} {wall / n / 1e3:7.2f} {wall / total:6.1%} "
              + " ".join(f"{ops[k] / n / 1e3:13.2f}" for k in kinds) + f" {py / n / 1e3:8.2f}")
    col = {k: sum(by.get((ph, k), 0.0) for ph in PHASES) for k in kinds}
    py_all = total - sum(col.values())
    print(f"{'all':<10} {total / n / 1e3:7.2f} {1:6.1%} " + " ".join(f"{col[k] / n / 1e3:13.2f}" for k in kinds)
          + f" {py_all / n / 1e3:8.2f}")
    print("shares of the phases' time: " + ", ".join(f"{k} {col[k] / total:.1%}" for k in kinds)
          + f", Python {py_all / total:.1%}")
    outside = profiled * 1e6 - total
    print(f"outside the phases (init, per-batch setup, results): {outside / 1e6:.2f} s "
          f"({outside / 1e6 / profiled:.1%})")
    top: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in events:
        if ev.name not in PHASES and ev.cpu_parent is not None and ev.cpu_parent.name in PHASES:
            entry = top[(ev.cpu_parent.name, ev.name)]
            entry[0] += ev.cpu_time_total
            entry[1] += 1
    print(f"\nthe {args.top} largest direct children of a phase (operators, autograd nodes), ms per pass:")
    for (ph, name), (t, calls) in sorted(top.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {ph:<10} {name:<50} {t / n / 1e3:7.2f}  ({calls / n:.1f} calls per pass)")


if __name__ == "__main__":
    main()
