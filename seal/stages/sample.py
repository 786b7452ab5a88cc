"""The sample stage: K self-edits per context of one shard, from the round's policy
(round-<r>/edits/<shard>.jsonl)."""

from __future__ import annotations

import time
from typing import Any

from seal import metrics
from seal.generation.params import Completion, GenParams
from seal.seeds import derive_seed
from seal.stages.runs import check_shard, read_plan, shard_key, should_write
from seal.stages.runtime import Runtime


def sample_edits(task: Any, task_cfg: Any, gen: Any, prompts: list[str], seeds: list[int],
                 params: GenParams) -> tuple[list[Completion], list[int]]:
    """One self-edit per prompt, and how many samples each took. A task with `edit_problem`
    (ARC: the edit must parse) gets each refused edit sampled again with the next seed, up to
    `edit_attempts(task_cfg)` samples in all; the last sample stays when none passes. Retries are
    batched: each attempt is one generation call over the edits still refused. Seeds of retry a
    are derived from (first seed, a), so a rerun samples the same edits."""
    comps = gen.generate(prompts, seeds, params)
    tries = [1] * len(prompts)
    check = getattr(task, "edit_problem", None)
    limit = task.edit_attempts(task_cfg) if check is not None else 1
    for attempt in range(1, limit):
        redo = [i for i, c in enumerate(comps) if check(c.text, task_cfg)]
        if not redo:
            break
        again = gen.generate([prompts[i] for i in redo], [derive_seed(seeds[i], "resample", attempt) for i in redo],
                             params)
        for i, c in zip(redo, again, strict=True):
            comps[i], tries[i] = c, attempt + 1
    return comps, tries


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
    completions, tries = sample_edits(rt.task, cfg.task, gen, prompts, seeds, cfg.sampling.gen_params())
    share = (time.perf_counter() - t0) / max(1, len(jobs))  # this edit's share of the shard's time
    rows = [
        {"context": c, "k": k, "prompt": p, "text": comp.text, "tokens": comp.tokens,
         "finish": comp.finish, "seed": s, "samples": n, "backend": gen.name, "gen_s": round(share, 4)}
        for (c, k), p, s, comp, n in zip(jobs, prompts, seeds, completions, tries, strict=True)
    ]
    rt.run.write_jsonl(key, rows)
    metrics.self_edits_sampled(cfg.task.name, len(rows), sum(r["tokens"] for r in rows))
    return True
