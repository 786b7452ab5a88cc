"""The sample stage: K self-edits per context of one shard, from the round's policy
(round-<r>/edits/<shard>.jsonl)."""

from __future__ import annotations

import time

from seal import metrics
from seal.seeds import derive_seed
from seal.stages.runs import check_shard, read_plan, shard_key, should_write
from seal.stages.runtime import Runtime


@metrics.stage("sample", sharded=True)
def sample_shard(rt: Runtime, round_: int, shard: int, redo: bool = False) -> bool:
    """Sample K self-edits for each context of one shard; returns False if it was already done
    (a damaged shard of an unfinished round is redone; `redo` redoes a sound one too)."""
    key = shard_key(round_, "edits", shard)
    cfg = rt.cfg
    plan = read_plan(rt.run, round_)
    check_shard(plan["sample_shards"], shard, "sample")
    if not should_write(rt.run, plan, round_, "edits", shard, redo):
        return False
    jobs = [(c, k) for c in plan["sample_shards"][shard] for k in range(cfg.edits_per_context)]
    prompts = [rt.task.context_prompt(rt.records[c], cfg.task) for c, _ in jobs]
    seeds = [derive_seed(cfg.seed, "sample", round_, c, k) for c, k in jobs]
    gen = rt.policy_generator(round_)
    t0 = time.perf_counter()
    completions = gen.generate(prompts, seeds, cfg.sampling.gen_params())
    share = (time.perf_counter() - t0) / max(1, len(jobs))  # this edit's share of the shard's time
    rows = [
        {"context": c, "k": k, "prompt": p, "text": comp.text, "tokens": comp.tokens,
         "finish": comp.finish, "seed": s, "backend": gen.name, "gen_s": round(share, 4)}
        for (c, k), p, s, comp in zip(jobs, prompts, seeds, completions, strict=True)
    ]
    rt.run.write_jsonl(key, rows)
    metrics.self_edits_sampled(cfg.task.name, len(rows), sum(r["tokens"] for r in rows))
    return True
