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
