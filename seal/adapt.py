"""The inner loop, one candidate at a time: for each candidate self-edit, F LoRA fits of the
current model, each scored (`inner.batched: false`; the default, seal.multilora.fit_shard, fits
a shard's candidates B at a time to the same adapters and fills the same score rows).

The current model is loaded once per process and shared by every candidate: a fit wraps it with
a fresh adapter, trains, scores, saves the adapter, then unloads it, leaving the weights as they
were. Loading a 7B model takes far longer than one fit, so this is what makes shards pay off.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from seal import tasks, train
from seal.config import RunConfig
from seal.generate import TransformersGenerator
from seal.seeds import derive_seed
from seal.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One sampled self-edit of one context."""

    context: int
    k: int
    text: str


def score_model(model: Any, tokenizer: Any, task: Any, record: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """Score a model (adapted or not) on one context's held-out probes."""
    return tasks.score(task, TransformersGenerator(model, tokenizer), record, cfg.task, cfg.sampling.batch_size)


def new_score_row(cand: Candidate, job: Any, fits: int) -> dict[str, Any]:
    """The score row both trainers (sequential here, batched in multilora.py) fill in."""
    row: dict[str, Any] = {
        "context": cand.context, "k": cand.k, "examples": len(job.examples),
        "rewards": [], "fit_s": [], "score_s": [], "losses": [], "answers": [],
    }
    if job.info:
        row["job"] = job.info  # the task's reading of the edit (e.g. ARC: choices, clamps, data counts)
    if job.skip:
        # Not trained (e.g. an unparseable edit or one over the compute cap): reward 0, reason kept.
        row.update(skip=job.skip, rewards=[0.0] * fits, reward=0.0)
    return row


def fit_candidate(
    model: Any,
    tokenizer: Any,
    task: Any,
    record: dict[str, Any],
    cand: Candidate,
    cfg: RunConfig,
    round_: int,
    adapters: Store | None,
) -> tuple[Any, dict[str, Any]]:
    """F independent fits of one candidate; returns the (unchanged) model and its score row.

    `adapters`, when given, receives each fit's adapter at `<context>/<k>/<fit>/`.
    """
    job = task.inner_job(record, cand.text, cfg.task, cfg.inner)
    row = new_score_row(cand, job, cfg.inner.fits)
    if job.skip:
        return model, row
    for fit in range(cfg.inner.fits):
        seed = derive_seed(cfg.seed, "fit", round_, cand.context, cand.k, fit)
        t0 = time.perf_counter()
        peft_model = train.attach_lora(model, job.lora, seed)
        stats = train.train(peft_model, tokenizer, job.examples, job.lora, seed, cfg.model.max_length)
        t1 = time.perf_counter()
        result = score_model(peft_model, tokenizer, task, record, cfg)
        t2 = time.perf_counter()
        if adapters is not None:
            with tempfile.TemporaryDirectory(prefix="seal-adapter-") as tmp:
                peft_model.save_pretrained(tmp)
                adapters.put_dir(f"{cand.context}/{cand.k}/{fit}", tmp)
        # unload() strips the LoRA layers without merging: the shared model is as before.
        model = peft_model.unload()
        row["rewards"].append(result["score"])
        row["answers"].append(result["answers"])
        row["losses"].append([stats["first_loss"], stats["last_loss"]])
        row["fit_s"].append(round(t1 - t0, 4))
        row["score_s"].append(round(t2 - t1, 4))
    row["reward"] = sum(row["rewards"]) / len(row["rewards"])
    row["trainer"] = "sequential"
    return model, row
