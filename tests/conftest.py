"""Shared fixtures: an isolated model cache, tiny configs, and (below) a real S3 server."""

from __future__ import annotations

import os

import pytest

# Tiny-model cache for the whole session, away from the user's ~/.cache/seal.
os.environ.setdefault("SEAL_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"seal-test-cache-{os.getuid()}"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

TINY = "tiny:hidden=64,layers=2,seed=0"


def tiny_overrides(store: str, run_id: str = "t") -> list[str]:
    """A 2-round, 3-context, K=2, F=1 run on a tiny model: the integration tests' setting."""
    return [
        f"store={store}", f"run_id={run_id}", "rounds=2", "contexts_per_round=3", "edits_per_context=2",
        f"model.base={TINY}", "model.max_length=256", "task.grader=f1", "task.answer_tokens=8",
        "sampling.max_new_tokens=24", "sampling.batch_size=8",
        "inner.fits=1", "inner.rank=4", "inner.alpha=8", "inner.epochs=2", "inner.batch_size=2",
        "filter.min_reward=-1", "mstep.rank=4", "mstep.alpha=8", "mstep.epochs=1",
        "mstep.target_modules=[q_proj,v_proj]", "shards.sample_size=2", "shards.adapt_size=2",
    ]


@pytest.fixture(scope="session")
def tiny_model():
    """(model, tokenizer) of the session's tiny model, loaded once."""
    from seal.models import choose_placement, load_model, load_tokenizer

    return load_model(TINY, choose_placement("cpu")), load_tokenizer(TINY)
