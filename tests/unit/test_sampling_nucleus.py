"""Top-p sampling over a large vocabulary (Gemma 3's 262k) takes the top candidates instead of a
full sort: the sampled tokens are exactly the full sort's (seal.generation.transformers_backend)."""

from __future__ import annotations

import torch

from seal.generation import transformers_backend as tb
from seal.generation.params import GenParams


def full_sort_pick(logits, gen, params):
    """The rule with a full sort, as it was before the shortcut."""
    probs = torch.softmax(logits / params.temperature, dim=-1)
    sorted_p, order = probs.sort(descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p >= params.top_p
    sorted_p[drop] = 0.0
    probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=gen))


def test_large_vocabulary_nucleus_equals_the_full_sort():
    g = torch.Generator().manual_seed(0)
    shortcut = fallback = 0
    for i in range(12):
        # peaked (the nucleus within the top 1,024) and flat (it is not: the full sort runs)
        logits = torch.randn(262144, generator=g) * (8.0 if i % 2 else 1.0)
        params = GenParams(max_new_tokens=1, temperature=1.0, top_p=0.95)
        top = torch.softmax(logits, -1).topk(tb.NUCLEUS_CANDIDATES).values.sum()
        shortcut += bool(top >= 0.95)
        fallback += bool(top < 0.95)
        a = tb.TransformersGenerator._pick(logits, torch.Generator().manual_seed(i), params)
        b = full_sort_pick(logits, torch.Generator().manual_seed(i), params)
        assert a == b
    assert shortcut and fallback  # both branches ran
