"""The plan stage: choose a round's contexts and cut its work into shards (round-<r>/plan.json).

A plan holds indices only (context ids, (context, k) pairs), never data: Argo fans shards out
from these lists, and they must stay small enough for the workflow object (etcd caps near 1 MB).
"""

from __future__ import annotations

import random
from typing import Any

from seal import metrics
from seal.config import RunConfig
from seal.seeds import derive_seed
from seal.stages.runs import plan_key
from seal.stages.runtime import Runtime


def choose_contexts(n_available: int, per_round: int, run_seed: int, round_: int) -> list[int]:
    """Round r takes the r-th slice of one seeded permutation: rounds see distinct contexts
    while there are enough, and wrap around after that."""
    order = list(range(n_available))
    random.Random(derive_seed(run_seed, "contexts")).shuffle(order)
    start = round_ * per_round
    return sorted(order[(start + i) % n_available] for i in range(min(per_round, n_available)))


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def make_plan(cfg: RunConfig, n_available: int, round_: int) -> dict[str, Any]:
    contexts = choose_contexts(n_available, cfg.contexts_per_round, cfg.seed, round_)
    candidates = [[c, k] for c in contexts for k in range(cfg.edits_per_context)]
    return {
        "round": round_,
        "contexts": contexts,
        "sample_shards": chunks(contexts, cfg.shards.sample_size),
        "adapt_shards": chunks(candidates, cfg.shards.adapt_size),
    }


def shard_indices(plan: dict[str, Any]) -> dict[str, list[int]]:
    """What Argo's withParam needs: the shard numbers of each fan-out stage."""
    return {
        "sample": list(range(len(plan["sample_shards"]))),
        "adapt": list(range(len(plan["adapt_shards"]))),
    }


@metrics.stage("plan")
def plan_round(rt: Runtime, round_: int) -> dict[str, Any]:
    """Write round r's plan.json once; a rerun returns the plan already written."""
    key = plan_key(round_)
    if rt.run.exists(key):
        return rt.run.read_json(key)
    plan = make_plan(rt.cfg, rt.context_count(), round_)
    rt.run.write_json(key, plan)
    return plan
