"""One module per task family: prompts, self-edit parsing, inner-loop data and scoring.

A task module provides the functions the stages call, so the stages stay task-agnostic:

- `load_contexts(task_cfg) -> list[record]`: the contexts; a context id is an index in this list;
- `context_prompt(record, task_cfg) -> str`: what the policy reads before writing a self-edit;
- `inner_job(record, edit, task_cfg, inner_cfg) -> InnerJob`: the training data and LoRA settings
  an edit asks for (a task may let the edit choose them, or refuse to train it);
- `probe_prompts(record, task_cfg) -> list[str]` and `probe_params(task_cfg, batch_size)`: the
  held-out probes, answered without the context;
- `grade_outputs(record, outputs, task_cfg) -> {"score": float, ...}`: the reward from the answers.

Splitting probing from grading lets a backend answer the probes of many adapted models in one
batched call and grade each candidate afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class InnerJob:
    """What the inner loop fits for one self-edit."""

    examples: list[Any]  # seal.train.Example
    lora: Any  # seal.config.LoraConfig: the run's settings, or the edit's choice
    skip: str = ""  # non-empty: do not train; the candidate scores 0 with this reason
    # What the task made of the edit (parsed choices, clamps, data counts): copied into the
    # candidate's score row under "job", so a skip or a clamp is visible in the store.
    info: dict[str, Any] = field(default_factory=dict)


def get_task(name: str) -> ModuleType:
    if name == "knowledge":
        from seal.tasks import knowledge

        return knowledge
    if name == "arc":
        from seal.tasks import arc

        return arc
    raise ValueError(f"unknown task {name!r}")  # config validation rejects this earlier


def score(task: ModuleType, generator: Any, record: dict[str, Any], task_cfg: Any, batch_size: int) -> dict[str, Any]:
    """Answer a context's probes with one model and grade them."""
    prompts = task.probe_prompts(record, task_cfg)
    if not prompts:
        return task.grade_outputs(record, [], task_cfg)
    completions = generator.generate(prompts, [0] * len(prompts), task.probe_params(task_cfg, batch_size))
    return task.grade_outputs(record, [c.text for c in completions], task_cfg)
