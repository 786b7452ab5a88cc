"""The improve stage, ReSTEM's filter and M-step: join a round's scores, keep the self-edits that
helped, fine-tune the policy on them (round-<r>/kept.jsonl, policy/, and summary.json last).

The SFT set is (self-edit prompt -> kept edit) with the loss on the edit only. The policy is a
LoRA adapter over the base model, trained from the base each round (ReSTEM's choice: it keeps
errors from compounding across rounds) or continued from the previous round's adapter.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from typing import Any

from seal import metrics
from seal.config import FilterConfig, RunConfig
from seal.inner import train
from seal.seeds import derive_seed
from seal.stages.runs import (
    adapters_key,
    fetch_policy,
    kept_key,
    plan_key,
    policy_has_adapter,
    policy_key,
    read_edits,
    read_kept,
    read_plan,
    read_policy_meta,
    read_scores,
    read_summary,
    round_finished,
    summary_key,
)
from seal.stages.runtime import Runtime
from seal.store import Store, sha256


def filter_scores(scores: list[dict[str, Any]], rule: FilterConfig) -> list[dict[str, Any]]:
    """The score rows whose self-edits pass the rule, in (context, k) order."""
    rows = sorted(scores, key=lambda r: (r["context"], r["k"]))
    if rule.rule == "threshold":
        return [r for r in rows if r["reward"] >= rule.threshold]
    if rule.rule == "improved":
        return [r for r in rows if r["reward"] > r["baseline"]]
    by_context: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_context[r["context"]].append(r)
    kept = []
    for group in by_context.values():
        best = max(group, key=lambda r: (r["reward"], -r["k"]))  # ties go to the lowest k
        if rule.rule == "top1_always" or best["reward"] > rule.min_reward:
            kept.append(best)
    return sorted(kept, key=lambda r: (r["context"], r["k"]))


def sft_rows(kept: list[dict[str, Any]], edits: dict[tuple[int, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """kept.jsonl lines: the prompt the policy saw, the edit it wrote, and why it was kept."""
    out = []
    for r in kept:
        e = edits[(r["context"], r["k"])]
        out.append({
            "context": r["context"], "k": r["k"], "prompt": e["prompt"], "completion": e["text"],
            "reward": r["reward"], "baseline": r["baseline"],
        })
    return out


def m_step(base_model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: Any, seed: int,
           out_dir: str, previous_adapter: str | None) -> dict[str, Any]:
    """LoRA SFT of the policy on kept rows; writes the adapter to out_dir and returns loss stats.

    `cfg` is the run config; with mstep.init == 'previous' the previous adapter keeps training.
    """
    start_from = previous_adapter if cfg.mstep.init == "previous" else None
    model = train.attach_lora(base_model, cfg.mstep, seed, adapter_dir=start_from)
    examples = [train.Example(text=r["completion"], prompt=r["prompt"]) for r in rows]
    stats = train.train(model, tokenizer, examples, cfg.mstep, seed, cfg.model.max_length, cfg.mstep.accumulate)
    model.save_pretrained(out_dir)
    return stats


@metrics.stage("improve")
def improve_round(rt: Runtime, round_: int, redo: bool = False) -> dict[str, Any]:
    """Join scores, filter, run the M-step, write kept.jsonl, policy/ and summary.json (last).
    `redo` recomputes all three (the seeds are the run's, so the same edits are kept)."""
    run, cfg = rt.run, rt.cfg
    if redo:
        for key in (summary_key(round_), kept_key(round_), policy_key(round_)):
            run.delete(key)  # summary first: the round stops counting as finished
    if round_finished(run, round_):
        return read_summary(run, round_)
    t0 = time.perf_counter()
    plan = read_plan(run, round_)
    scores = read_scores(run, plan, round_)
    edits = read_edits(run, plan, round_, set(plan["contexts"]))
    if run.exists(kept_key(round_)):
        kept = read_kept(run, round_)
    else:
        kept = sft_rows(filter_scores(scores, cfg.filter), edits)
        run.write_jsonl(kept_key(round_), kept)
        metrics.edits_kept(cfg.task.name, len(kept))
    mstep = write_policy(rt, round_, kept)
    prune_adapters(run, cfg, round_, scores, kept)
    rewards = [r["reward"] for r in scores]
    baselines = {r["context"]: r["baseline"] for r in scores}
    summary = {
        "round": round_,
        # The plan is a JSON object without an end record: its hash here lets `seal verify` check it.
        "plan_sha256": sha256(run.read_bytes(plan_key(round_))),
        "contexts": len(plan["contexts"]),
        "candidates": len(scores),
        "mean_reward": sum(rewards) / len(rewards),
        "max_reward": max(rewards),
        "mean_baseline": sum(baselines.values()) / len(baselines),
        "kept": len(kept),
        # Edits the task refused to train (unparseable, over a compute cap): reward 0, counted.
        "skipped": sum(1 for r in scores if r.get("skip")),
        "mstep": mstep,
        "tokens": sum(e["tokens"] for e in edits.values()),
        "seconds": {
            "sample": round(sum(e["gen_s"] for e in edits.values()), 2),
            "adapt": round(sum(sum(r["fit_s"]) + sum(r["score_s"]) for r in scores), 2),
            "improve": round(time.perf_counter() - t0, 2),
        },
    }
    run.write_json(summary_key(round_), summary)
    return summary


def write_policy(rt: Runtime, round_: int, kept: list[dict[str, Any]]) -> dict[str, Any]:
    """The M-step: policy/ holds policy.json and, when trained, the LoRA adapter."""
    run, cfg = rt.run, rt.cfg
    key = policy_key(round_)
    if run.exists(key):
        return read_policy_meta(run, round_)
    previous = round_ > 0 and policy_has_adapter(run, round_ - 1)
    with tempfile.TemporaryDirectory(prefix="seal-mstep-") as tmp, \
            tempfile.TemporaryDirectory(prefix="seal-prev-") as prev_dir:
        if previous and cfg.mstep.init == "previous":
            fetch_policy(run, round_ - 1, prev_dir)
        if kept:
            rt.release()  # the M-step trains a fresh copy of the base: drop the merged policy
            stats = m_step(rt.load_base(), rt.tokenizer, kept, cfg, derive_seed(cfg.seed, "mstep", round_),
                           tmp, prev_dir if previous else None)
            meta = {"adapter": True, "examples": len(kept), "init": cfg.mstep.init, **stats}
        elif previous and cfg.mstep.init == "previous":
            # Nothing kept: the previous policy carries over unchanged.
            meta = {"adapter": True, "examples": 0, "init": "previous", "carried_from": round_ - 1}
            tmp = prev_dir
        else:
            meta = {"adapter": False, "examples": 0, "init": cfg.mstep.init}
        with open(f"{tmp}/policy.json", "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        run.put_dir(key, tmp)
    return meta


def prune_adapters(run: Store, cfg: RunConfig, round_: int, scores: list[dict], kept: list[dict]) -> None:
    """keep_adapters=winners: drop the fitted adapters of edits that were not kept."""
    if cfg.inner.keep_adapters != "winners":
        return
    winners = {(r["context"], r["k"]) for r in kept}
    for r in scores:
        if (r["context"], r["k"]) not in winners:
            run.delete(f"{adapters_key(round_)}/{r['context']}/{r['k']}")
