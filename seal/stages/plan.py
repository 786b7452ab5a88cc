"""The plan stage: choose a round's contexts and cut its work into shards (round-<r>/plan.json).

A plan holds indices only (context ids, (context, k) pairs), never data: Argo fans shards out
from these lists, and they must stay small enough for the workflow object (etcd caps near 1 MB).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from seal import metrics
from seal.config import RunConfig
from seal.errors import DataError
from seal.seeds import derive_seed
from seal.stages.runs import damaged, load_plan, plan_key, round_finished
from seal.stages.runtime import Runtime

log = logging.getLogger(__name__)


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
def plan_round(rt: Runtime, round_: int, redo: bool = False) -> dict[str, Any]:
    """Write round r's plan.json once; a rerun returns the plan already written. A damaged plan
    is rewritten (the plan is a pure function of the config) unless its round is finished;
    `redo` rewrites it regardless."""
    key = plan_key(round_)
    if rt.run.exists(key) and not redo:
        try:
            return load_plan(rt.run, round_)
        except DataError as e:
            if round_finished(rt.run, round_):
                raise damaged(rt.run, round_, str(e), "plan") from None
            log.warning("%s: redoing it", e)
    plan = make_plan(rt.cfg, rt.context_count(), round_)
    rt.run.write_json(key, plan)
    return plan
