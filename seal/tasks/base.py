"""What a task family provides, so the stages, the inner loop and the evaluations stay task-agnostic.

A task is a module (seal.tasks.knowledge, seal.tasks.arc) with the functions of `Task`:

- `load_contexts(task_cfg) -> list[record]`: the contexts; a context id is an index in this list;
- `context_prompt(record, task_cfg) -> str`: what the policy reads before writing a self-edit;
- `inner_job(record, edit, task_cfg, inner_cfg) -> InnerJob`: the training data and LoRA settings
  an edit asks for (a task may let the edit choose them, or refuse to train it);
- `probe_prompts(record, task_cfg) -> list[str]` and `probe_params(task_cfg, batch_size)`: the
  held-out probes, answered without the context;
- `grade_outputs(record, outputs, task_cfg) -> {"score": float, ...}`: the reward from the answers.

Optional functions (looked up with getattr; ARC has them, knowledge does not):

- `bind_tokenizer(records, tokenizer, task_cfg) -> records`: what the task needs of the
  tokenizer (ARC: the model's chat format), bound once by `stages.runtime.Runtime.records`;
- `edit_problem(text, task_cfg) -> str` and `edit_attempts(task_cfg) -> int`: a sampled
  self-edit with a problem is sampled again, up to that many samples in all
  (`stages.sample.sample_edits`).

Splitting probing from grading lets a backend answer the probes of many adapted models in one
batched call and grade each candidate afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from seal.config import LoraConfig, TaskConfig
from seal.generation.params import GenParams
from seal.inner.train import Example


@dataclass(frozen=True)
class InnerJob:
    """What the inner loop fits for one self-edit."""

    examples: list[Example]
    lora: LoraConfig  # the run's inner-loop settings, or the edit's own choice (ARC)
    skip: str = ""  # non-empty: do not train; the candidate scores 0 with this reason
    # What the task made of the edit (parsed choices, clamps, data counts): copied into the
    # candidate's score row under "job", so a skip or a clamp is visible in the store.
    info: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """The functions a task module defines (a module satisfies this protocol structurally)."""

    def load_contexts(self, task_cfg: TaskConfig) -> list[dict[str, Any]]: ...

    def context_prompt(self, record: dict[str, Any], task_cfg: TaskConfig) -> str: ...

    def inner_job(self, record: dict[str, Any], edit: str, task_cfg: TaskConfig, inner_cfg: Any) -> InnerJob: ...

    def probe_prompts(self, record: dict[str, Any], task_cfg: TaskConfig) -> list[str]: ...

    def probe_params(self, task_cfg: TaskConfig, batch_size: int) -> GenParams: ...

    def grade_outputs(self, record: dict[str, Any], outputs: list[str], task_cfg: TaskConfig) -> dict[str, Any]: ...
