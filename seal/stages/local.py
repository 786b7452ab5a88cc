"""`seal run`: every stage of every round, in order, in one process on one machine; resumable from
the store (the same stage functions the Argo workflow runs one shard per pod)."""

from __future__ import annotations

import logging
from typing import Any

from seal.config import RunConfig
from seal.errors import SealError
from seal.stages.adapt import adapt_shard
from seal.stages.improve import improve_round
from seal.stages.plan import plan_round
from seal.stages.runs import init_run, record_failure, set_status, summaries, summary_key
from seal.stages.runtime import Runtime
from seal.stages.sample import sample_shard
from seal.store import open_store

log = logging.getLogger(__name__)


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    # disable=None: bars on a terminal, quiet in CI logs and pods.
    return tqdm(total=total, desc=desc, unit="it", disable=None, leave=False)


def run_local(cfg: RunConfig) -> list[dict[str, Any]]:
    """Run (or resume) every round; returns the round summaries."""
    run = open_store(cfg.run_uri)
    init_run(run, cfg)
    rt = Runtime(cfg, run)
    try:
        for r in range(cfg.rounds):
            if run.exists(summary_key(r)):
                log.info("round %d: done already", r)
                continue
            plan = plan_round(rt, r)
            n_sample, n_adapt = len(plan["sample_shards"]), len(plan["adapt_shards"])
            with _progress(n_sample, f"round {r} sample") as bar:
                for s in range(n_sample):
                    sample_shard(rt, r, s)
                    bar.update(1)
            n_cands = sum(len(a) for a in plan["adapt_shards"])
            with _progress(n_cands, f"round {r} adapt") as bar:
                for a in range(n_adapt):
                    if not adapt_shard(rt, r, a, progress=bar):
                        bar.update(len(plan["adapt_shards"][a]))
            summary = improve_round(rt, r)
            log.info("round %d: mean reward %.3f, kept %d", r, summary["mean_reward"], summary["kept"])
    except SealError as e:
        record_failure(run, e)  # never replaces `e`: a dead store fails both
        raise
    rows = summaries(run)[: cfg.rounds]
    set_status(run, "succeeded")
    return rows
