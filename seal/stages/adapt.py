"""The adapt stage: the inner loop for one shard of candidate self-edits, F fits each, scored on
the context's held-out probes (round-<r>/scores/<shard>.jsonl, adapters under round-<r>/adapters/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seal import metrics
from seal.config import RunConfig
from seal.generation.backend import backend_name
from seal.inner.fit import Fit, run_fits
from seal.seeds import derive_seed
from seal.stages.runs import adapters_key, check_shard, read_edits, read_plan, shard_key, should_write
from seal.stages.runtime import Runtime
from seal.store import Store
from seal.tasks.base import Task


@dataclass(frozen=True)
class Candidate:
    """One sampled self-edit of one context."""

    context: int  # index into the task's contexts
    k: int  # which of the context's K self-edits
    text: str


def candidate_rows(model: Any, tokenizer: Any, task: Task, records: list[dict[str, Any]], cands: list[Candidate],
                   cfg: RunConfig, round_: int, adapters: Store | None = None, merged: bool = False,
                   baselines: bool = False) -> list[dict[str, Any]]:
    """One score row per candidate, in order: its F fits (seeded by run seed, round, context, k,
    fit) through the inner loop, each fit's reward, answers, losses and timings, and their mean
    "reward". An edit the task refuses to train (unparseable, over a compute cap) scores 0 with its
    "skip" reason. `baselines`: each row also gets its context's "baseline", the score of `model`
    itself. `adapters` receives each fit's adapter at <context>/<k>/<fit>/.
    """
    rows, fits, owners = [], [], []
    for cand in cands:
        record = records[cand.context]
        job = task.inner_job(record, cand.text, cfg.task, cfg.inner)
        row: dict[str, Any] = {
            "context": cand.context, "k": cand.k, "examples": len(job.examples),
            "rewards": [], "fit_s": [], "score_s": [], "losses": [], "answers": [],
        }
        if job.info:
            row["job"] = job.info  # the task's reading of the edit (e.g. ARC: choices, clamps, data counts)
        if job.skip:
            row.update(skip=job.skip, rewards=[0.0] * cfg.inner.fits, reward=0.0)
        else:
            for f in range(cfg.inner.fits):
                seed = derive_seed(cfg.seed, "fit", round_, cand.context, cand.k, f)
                fits.append(Fit(record, job.examples, job.lora, seed, key=f"{cand.context}/{cand.k}/{f}"))
                owners.append(len(rows))
        rows.append(row)
    contexts = sorted({c.context for c in cands}) if baselines else []
    outcomes, base = run_fits(model, tokenizer, task, fits, cfg, baselines=[records[c] for c in contexts],
                              adapters=adapters, merged=merged)
    for r, out in zip(owners, outcomes, strict=True):
        row = rows[r]
        row["rewards"].append(out.graded["score"])
        row["answers"].append(out.graded["answers"])
        row["losses"].append([out.stats["first_loss"], out.stats["last_loss"]])
        row["fit_s"].append(round(out.fit_s, 4))
        row["score_s"].append(round(out.score_s, 4))
    base_scores = {c: g["score"] for c, g in zip(contexts, base, strict=True)}
    # The sequential trainer scores each peft model with transformers; the batched one on the
    # configured backend.
    trainer = {"trainer": "batched", "score_backend": backend_name(cfg.sampling.backend)} if cfg.inner.batched \
        else {"trainer": "sequential"}
    for row in rows:
        if "reward" not in row:
            row["reward"] = sum(row["rewards"]) / len(row["rewards"])
        row.update(trainer)
        if baselines:
            row["baseline"] = base_scores[row["context"]]
    return rows


@metrics.stage("adapt", sharded=True)
def adapt_shard(rt: Runtime, round_: int, shard: int, progress: Any = None, redo: bool = False) -> bool:
    """The inner loop for one shard of candidates; returns False if it was already done (a
    damaged shard of an unfinished round is redone; `redo` redoes a sound one too)."""
    key = shard_key(round_, "scores", shard)
    cfg = rt.cfg
    plan = read_plan(rt.run, round_)
    check_shard(plan["adapt_shards"], shard, "adapt")
    if not should_write(rt.run, plan, round_, "scores", shard, redo):
        return False
    pairs = [tuple(p) for p in plan["adapt_shards"][shard]]
    edits = read_edits(rt.run, plan, round_, {c for c, _ in pairs})
    cands = [Candidate(context=c, k=k, text=edits[(c, k)]["text"]) for c, k in pairs]
    adapters = rt.run.child(adapters_key(round_)) if cfg.inner.keep_adapters != "none" else None
    if adapters is not None and rt.run.exists(key):
        for c, k in pairs:  # adapters are write-once: a redo replaces the shard's old ones
            adapters.delete(f"{c}/{k}")
    rows = candidate_rows(rt.policy_model(round_), rt.tokenizer, rt.task, rt.records, cands, cfg, round_, adapters,
                          merged=rt.has_policy_adapter(round_), baselines=True)
    for row in rows:
        metrics.inner_fits(cfg.task.name, row["fit_s"], row["reward"])
        if progress is not None:
            progress.update(1)
    rt.run.write_jsonl(key, rows)
    return True

