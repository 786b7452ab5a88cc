"""ReSTEM's filter and M-step: keep the self-edits that helped, fine-tune the policy on them.

The SFT set is (self-edit prompt -> kept edit) with the loss on the edit only. The policy is a
LoRA adapter over the base model, trained from the base each round (ReSTEM's choice: it keeps
errors from compounding across rounds) or continued from the previous round's adapter.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from seal.config import FilterConfig


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
        if best["reward"] > rule.min_reward:
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
    from seal import train

    start_from = previous_adapter if cfg.mstep.init == "previous" else None
    model = train.attach_lora(base_model, cfg.mstep, seed, adapter_dir=start_from)
    examples = [train.Example(text=r["completion"], prompt=r["prompt"]) for r in rows]
    stats = train.train(model, tokenizer, examples, cfg.mstep, seed, cfg.model.max_length)
    model.save_pretrained(out_dir)
    return stats
