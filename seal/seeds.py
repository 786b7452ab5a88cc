"""Seeds derived from (run seed, round, context, k, fit), so any rerun reproduces the same numbers."""

from __future__ import annotations

import hashlib
import random


def derive_seed(run_seed: int, *parts: object) -> int:
    """A 31-bit seed that depends only on the run seed and the parts, in order."""
    text = "/".join(str(p) for p in (run_seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (used before LoRA init and data shuffling)."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
