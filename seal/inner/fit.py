"""The inner loop, in one place: fit LoRA adapters over the current model and score each one on
its context's held-out probes. The adapt stage, the world report and the ARC evaluation all call
`run_fits`, so training and evaluation cannot drift apart.

A `Fit` is one adapter to train (examples, LoRA settings, seed) and the context whose probes score
it. `inner.batched` picks the trainer; both give the same adapters, losses and answers to float
tolerance (tests/integration/test_multilora.py) and fill the same `Outcome`s:

- batched (the default): seal.inner.multilora trains B adapters per forward/backward of the shared
  base, then every adapter's probes, and each baseline context's with no adapter, are answered in
  one generation call (seal.inner.score.score_adapters);
- sequential (`inner.batched: false`, the reference implementation's way): one peft adapter at a
  time is attached, trained, scored, saved and unloaded.

The current model is loaded once per process and shared by every fit; it is left as it was.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from seal.config import LoraConfig, RunConfig
from seal.inner import train
from seal.inner.multilora import FitJob, fit_jobs, save_peft
from seal.inner.score import score_adapters, score_model
from seal.store import Store
from seal.tasks.base import Task


@dataclass(frozen=True)
class Fit:
    """One adapter to fit, and the context whose probes score it."""

    record: dict[str, Any]  # the context (a task record)
    examples: list[train.Example]
    lora: LoraConfig
    seed: int
    key: str = ""  # where the adapter goes in `run_fits(adapters=...)`, e.g. "<context>/<k>/<fit>"


@dataclass
class Outcome:
    """What one fit produced."""

    graded: dict[str, Any]  # the task's grade of the probe answers: "score", "answers", ...
    stats: dict[str, float] = field(default_factory=dict)  # steps, first_loss, last_loss
    fit_s: float = 0.0  # seconds training (batched: this fit's share of its batch)
    score_s: float = 0.0  # seconds scoring (batched: this fit's share of the one call)


def run_fits(model: Any, tokenizer: Any, task: Task, fits: Sequence[Fit], cfg: RunConfig, *,
             baselines: Sequence[dict[str, Any]] = (), adapters: Store | None = None,
             merged: bool = False) -> tuple[list[Outcome], list[dict[str, Any]]]:
    """Train and score every fit with the trainer `cfg.inner.batched` picks; returns each fit's
    outcome and each baseline record's grade by `model` as it is (no adapter).

    `adapters`, when given, receives each fit's adapter (peft format) at its `key`. `merged`:
    `model` is the base with a policy merged in (a vLLM scorer then serves a saved copy of it).
    """
    if not fits:  # nothing to train: score the model itself, with no call to batch into
        return [], [score_model(model, tokenizer, task, rec, cfg) for rec in baselines]
    if cfg.inner.batched:
        return _batched(model, tokenizer, task, fits, cfg, baselines, adapters, merged)
    return _sequential(model, tokenizer, task, fits, cfg, baselines, adapters)


def _batched(model: Any, tokenizer: Any, task: Task, fits: Sequence[Fit], cfg: RunConfig,
             baselines: Sequence[dict[str, Any]], adapters: Store | None,
             merged: bool) -> tuple[list[Outcome], list[dict[str, Any]]]:
    jobs = [FitJob(list(f.examples), f.lora, f.seed) for f in fits]
    results, fit_s = fit_jobs(model, tokenizer, jobs, cfg.inner, cfg.model.max_length)
    with tempfile.TemporaryDirectory(prefix="seal-adapters-") as tmp:
        dirs = []
        for i, (f, res) in enumerate(zip(fits, results, strict=True)):
            d = os.path.join(tmp, str(i))
            save_peft(res.weights, f.lora, d, base=getattr(model, "name_or_path", ""))
            if adapters is not None and f.key:
                adapters.put_dir(f.key, d)
            dirs.append(d)
        t0 = time.perf_counter()
        outputs = score_adapters(model, tokenizer, task, cfg, [f.record for f in fits], [f.lora for f in fits],
                                 [r.weights for r in results], dirs, list(baselines), merged)
        score_share = (time.perf_counter() - t0) / len(fits)
    outcomes = [Outcome(graded=task.grade_outputs(f.record, outputs[i], cfg.task), stats=results[i].stats,
                        fit_s=fit_s[i], score_s=score_share) for i, f in enumerate(fits)]
    base = [task.grade_outputs(rec, outputs[len(fits) + j], cfg.task) for j, rec in enumerate(baselines)]
    return outcomes, base


def _sequential(model: Any, tokenizer: Any, task: Task, fits: Sequence[Fit], cfg: RunConfig,
                baselines: Sequence[dict[str, Any]], adapters: Store | None) -> tuple[list[Outcome], list[dict]]:
    outcomes = []
    for f in fits:
        t0 = time.perf_counter()
        peft_model = train.attach_lora(model, f.lora, f.seed)
        stats = train.train(peft_model, tokenizer, list(f.examples), f.lora, f.seed, cfg.model.max_length)
        t1 = time.perf_counter()
        graded = score_model(peft_model, tokenizer, task, f.record, cfg)
        t2 = time.perf_counter()
        if adapters is not None and f.key:
            with tempfile.TemporaryDirectory(prefix="seal-adapter-") as tmp:
                peft_model.save_pretrained(tmp)
                adapters.put_dir(f.key, tmp)
        # unload() strips the LoRA layers without merging: the shared model is as before.
        model = peft_model.unload()
        outcomes.append(Outcome(graded=graded, stats=stats, fit_s=t1 - t0, score_s=t2 - t1))
    return outcomes, [score_model(model, tokenizer, task, rec, cfg) for rec in baselines]
