"""Packed attention (seal.inner.multilora.packed_attention) against attention written out by hand,
row by row (a CPU's default) and per group of padded rows (a GPU's), with and without a sliding
window, and with grouped-query heads: outputs and the gradients they send back."""

import math

import pytest
import torch

from seal.inner import multilora

LENGTHS = [7, 3, 12, 5, 12]
HEADS, KV_HEADS, DIM = 4, 2, 8


class _Layer:
    training = False


def _by_hand(q, k, v, window):
    """Each row alone: causal softmax(q k^T / sqrt(d)) v, keys within `window` positions if set."""
    outs, start = [], 0
    for n in LENGTHS:
        qr, kr, vr = (t[0, :, start:start + n] for t in (q, k, v))
        kr, vr = (t.repeat_interleave(HEADS // KV_HEADS, dim=0) for t in (kr, vr))
        scores = qr @ kr.transpose(-1, -2) / math.sqrt(DIM)
        i = torch.arange(n)
        allowed = i[None, :] <= i[:, None]
        if window:
            allowed &= i[:, None] - i[None, :] < window
        scores = scores.masked_fill(~allowed, float("-inf"))
        outs.append((scores.softmax(-1) @ vr).transpose(0, 1))  # [n, H, D]
        start += n
    return torch.cat(outs).unsqueeze(0)


def _packed(q, k, v, window, per_row, monkeypatch):
    monkeypatch.setattr(multilora, "PER_ROW", per_row)
    pack = multilora.Packing(LENGTHS, torch.device("cpu"))
    assert pack.per_row == per_row
    multilora._ACTIVE_PACKING.append(pack)
    try:
        out, _ = multilora.packed_attention(_Layer(), q, k, v, None, scaling=DIM ** -0.5, sliding_window=window)
    finally:
        multilora._ACTIVE_PACKING.pop()
    return out


@pytest.mark.parametrize("window", [None, 4], ids=["causal", "sliding-window-4"])
@pytest.mark.parametrize("per_row", [True, False], ids=["per-row", "per-group"])
def test_packed_attention_is_each_row_alone(monkeypatch, window, per_row):
    torch.manual_seed(0)
    total = sum(LENGTHS)
    inputs = [torch.randn(1, h, total, DIM, requires_grad=True) for h in (HEADS, KV_HEADS, KV_HEADS)]
    weights = torch.randn(1, total, HEADS, DIM)  # a loss that weighs every output differently

    out = _packed(*inputs, window, per_row, monkeypatch)
    assert out.shape == (1, total, HEADS, DIM)
    (out * weights).sum().backward()
    grads = [t.grad.clone() for t in inputs]

    ref_inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    ref = _by_hand(*ref_inputs, window)
    (ref * weights).sum().backward()

    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, (t.grad for t in ref_inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_attention_rows_bench_prints_each_way(capsys, monkeypatch):
    """bench/attention_rows.py times the three ways for each B it is given and prints their ratio."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "attention_rows.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--rows", "2,3", "--repeats", "1", "--passes", "1"])
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {"2", "3"}
    for cells in rows.values():
        group, per_row, uniform, ratio = cells
        assert min(float(group), float(per_row), float(uniform)) > 0
        assert ratio.endswith("x") and float(ratio[:-1]) > 0
    assert multilora.PER_ROW is None  # put back
