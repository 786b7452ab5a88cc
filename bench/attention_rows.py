"""Attention over a packed pass, two ways, against the uniform batch the headroom measures.

A packed pass (seal.inner.multilora.Packing) lays B rows of different lengths end to end; each
row attends only to itself. `seal.inner.multilora.packed_attention` runs that either row by row
on views of the packed row (PER_ROW, a CPU's default) or per group of rows of similar length,
padded (a GPU's). This times one layer's attention, forward and backward, both ways, and the same
number of tokens as B uniform rows in one SDPA call (what the headroom's batch pays), for B rows
drawn from the inner loop's lengths (15-150 tokens) and the default tiny model's heads. Not run
by CI. Example (the figures in bench/README.md):

    OMP_NUM_THREADS=2 .venv/bin/python bench/attention_rows.py --rows 4,8,16,32,64
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

LENGTHS = [15, 15, 33, 40, 46, 56, 56, 72, 72, 79, 112, 112, 150]  # rows the bench's fits train on


class _Layer:
    training = True  # what packed_attention reads of the module


def time_once(way: str, lengths: list[int], heads: int, kv_heads: int, dim: int) -> float:
    import torch
    import torch.nn.functional as F

    from seal.inner import multilora

    total = sum(lengths)
    q = torch.randn(1, heads, total, dim, requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, requires_grad=True)
    v = torch.randn(1, kv_heads, total, dim, requires_grad=True)
    t0 = time.perf_counter()
    if way == "uniform":  # the same tokens as rows of one length, one SDPA call
        n = len(lengths)
        width = total // n

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t[:, :, : n * width].reshape(t.shape[1], n, width, dim).transpose(0, 1)

        out = F.scaled_dot_product_attention(rows(q), rows(k), rows(v), is_causal=True, enable_gqa=True)
    else:
        multilora.PER_ROW = way == "per row"
        pack = multilora.Packing(lengths, torch.device("cpu"))
        multilora._ACTIVE_PACKING.append(pack)
        try:
            out, _ = multilora.packed_attention(_Layer(), q, k, v, None, scaling=dim ** -0.5)
        finally:
            multilora._ACTIVE_PACKING.pop()
            multilora.PER_ROW = None
    out.backward(torch.ones_like(out))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="4,8,16,32,64", help="rows per pass (B), comma-separated")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=32, help="head size")
    p.add_argument("--passes", type=int, default=3, help="different passes (row lengths) per timing")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    import torch

    ways = ["per group, padded", "per row", "uniform"]
    print(f"one layer's attention, forward + backward, ms (median over {args.repeats} repeats of "
          f"{args.passes} passes x 10); {args.heads} heads, {args.kv_heads} key/value heads, head size {args.dim}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'rows':>5} " + " ".join(f"{w:>18}" for w in ways) + f" {'per group / per row':>20}")
    for b in (int(x) for x in args.rows.split(",")):
        rng = random.Random(b)
        passes = [[rng.choice(LENGTHS) for _ in range(b)] for _ in range(args.passes)]
        for way in ways:  # warm up
            time_once(way, passes[0], args.heads, args.kv_heads, args.dim)
        took: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(args.repeats):
            for way in ways:  # alternating: the machine's noise hits every way alike
                took[way].append(sum(time_once(way, lengths, args.heads, args.kv_heads, args.dim)
                                     for lengths in passes * 10) / (10 * args.passes))
        ms = {w: 1e3 * statistics.median(t) for w, t in took.items()}
        print(f"{b:>5} " + " ".join(f"{ms[w]:>18.2f}" for w in ways)
              + f" {ms['per group, padded'] / ms['per row']:>19.2f}x")


if __name__ == "__main__":
    main()
