"""Scoring adapted models: each answers its context's held-out probes (without the context), and
the task grades the answers.

`score_model` scores one model as it is (a PeftModel included). `score_adapters` scores many
adapters over one shared base in one call: vLLM with a LoRARequest per prompt, or routed
transformers batches (seal.inner.multilora.MultiLora: each row of a batch uses its own adapter).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from seal.config import LoraConfig, RunConfig
from seal.generation.backend import backend_name, make_generator
from seal.generation.transformers_backend import TransformersGenerator
from seal.inner.multilora import MultiLora, shape_key
from seal.tasks.base import Task


def score_model(model: Any, tokenizer: Any, task: Task, record: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """Answer one context's probes with one model (adapted or not) and grade them."""
    prompts = task.probe_prompts(record, cfg.task)
    if not prompts:
        return task.grade_outputs(record, [], cfg.task)
    gen = TransformersGenerator(model, tokenizer)
    completions = gen.generate(prompts, [0] * len(prompts), task.probe_params(cfg.task, cfg.sampling.batch_size))
    return task.grade_outputs(record, [c.text for c in completions], cfg.task)


def score_records(model: Any, tokenizer: Any, task: Task, records: list[dict[str, Any]],
                  cfg: RunConfig) -> list[dict[str, Any]]:
    """Many contexts' probes answered by one model (adapted or not) in shared batches, each graded:
    how the CPT and continual evaluations score one updated model on many passages."""
    prompts, owner = probes(task, cfg.task, records)
    texts: list[str] = []
    if prompts:
        gen = TransformersGenerator(model, tokenizer)
        texts = [c.text for c in gen.generate(prompts, [0] * len(prompts),
                                              task.probe_params(cfg.task, cfg.sampling.batch_size))]
    return [task.grade_outputs(rec, outs, cfg.task)
            for rec, outs in zip(records, regroup(texts, owner, len(records)), strict=True)]


def generate_routed(model: Any, tokenizer: Any, adapters: list[tuple[dict[str, tuple[Any, Any]], float]],
                    lora: LoraConfig, prompts: list[str], adapter_ids: list[int], params: Any) -> list[Any]:
    """Answer each prompt with its own adapter (adapter_ids[i] indexes `adapters`), all in shared
    batches of the base model: the transformers path's multi-adapter scoring."""
    multi = MultiLora(model, max(1, len(adapters)), lora.rank, lora.target_modules)
    try:
        for i, (weights, scale) in enumerate(adapters):
            multi.set_adapter(i, weights, scale)
        gen = TransformersGenerator(model, tokenizer, route=multi.route)
        return gen.generate(prompts, [0] * len(prompts), params, adapters=adapter_ids)
    finally:
        multi.remove()


def probes(task: Any, task_cfg: Any, records: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
    """Every record's probe prompts in one list, and the index of the record each belongs to."""
    prompts, owner = [], []
    for i, rec in enumerate(records):
        ps = task.probe_prompts(rec, task_cfg)
        prompts += ps
        owner += [i] * len(ps)
    return prompts, owner


def regroup(texts: list[str], owner: list[int], n: int) -> list[list[str]]:
    """probes' flat answers back into one list per record."""
    out: list[list[str]] = [[] for _ in range(n)]
    for text, i in zip(texts, owner, strict=True):
        out[i].append(text)
    return out


def answer_routed(model: Any, tokenizer: Any, task: Any, cfg: Any, lora: LoraConfig,
                  adapters: list[tuple[dict[str, tuple[Any, Any]], float]],
                  asks: list[tuple[int, dict[str, Any]]]) -> list[list[str]]:
    """For each (adapter index, record) in `asks`, that adapter's answers to the record's probes,
    all in shared routed batches of the base model."""
    prompts, owner = probes(task, cfg.task, [rec for _, rec in asks])
    # One decoding batch may hold the probes of up to inner.max_batch adapters: rows that finish
    # leave the batch, so a wide batch costs nothing extra and saves per-step overhead.
    params = task.probe_params(cfg.task, cfg.sampling.batch_size)
    params = dataclasses.replace(params, batch_size=params.batch_size * cfg.inner.max_batch)
    comps = generate_routed(model, tokenizer, adapters, lora, prompts, [asks[i][0] for i in owner], params)
    return regroup([c.text for c in comps], owner, len(asks))


def score_adapters(model: Any, tokenizer: Any, task: Task, cfg: RunConfig, records: list[dict[str, Any]],
                   loras: list[LoraConfig], weights: list[dict[str, tuple[Any, Any]]], dirs: list[str],
                   base_records: list[dict[str, Any]], merged: bool) -> list[list[str]]:
    """Adapter i's answers to records[i]'s probes (its weights in memory, and saved in peft form
    at dirs[i]), then the model's own answers (no adapter) for each of `base_records` (the
    baselines): one generation call per backend. vLLM: one LoRARequest per prompt, over
    `cfg.model.base` or, with `merged`, over a saved copy of `model`. transformers: routed batches,
    one call per adapter shape, the baselines riding with the first shape as an all-zero adapter."""
    n = len(records)
    sources = list(records) + list(base_records)  # the fits' records, then the baselines'
    if backend_name(cfg.sampling.backend) == "vllm":
        prompts, owner = probes(task, cfg.task, sources)
        gen = make_generator(cfg, tokenizer, lambda: model, merged=merged)
        comps = gen.generate(prompts, [0] * len(prompts), task.probe_params(cfg.task, cfg.sampling.batch_size),
                             loras=[dirs[i] if i < n else None for i in owner])
        return regroup([c.text for c in comps], owner, len(sources))
    out: list[list[str]] = [[] for _ in sources]
    by_shape: dict[tuple, list[int]] = {}
    for i, lora in enumerate(loras):
        by_shape.setdefault(shape_key(lora), []).append(i)
    for g, members in enumerate(by_shape.values()):
        adapters = [(weights[i], loras[i].alpha / loras[i].rank) for i in members]
        asks = [(slot, i) for slot, i in enumerate(members)]  # (adapter slot, source)
        if g == 0 and base_records:
            # The base model is one more adapter whose update is exactly zero (0 * finite = 0).
            zero = {name: (a.new_zeros(a.shape), b.new_zeros(b.shape)) for name, (a, b) in adapters[0][0].items()}
            asks += [(len(adapters), n + j) for j in range(len(base_records))]
            adapters.append((zero, 0.0))
        answers = answer_routed(model, tokenizer, task, cfg, loras[members[0]], adapters,
                                [(slot, sources[i]) for slot, i in asks])
        for (_, i), texts in zip(asks, answers, strict=True):
            out[i] = texts
    return out
