"""One module per task family: prompts, self-edit parsing, inner-loop data and scoring.

A task module provides the functions the stages call, so the stages stay task-agnostic:
`load_contexts(task_cfg)`, `context_prompt(record, task_cfg)`,
`training_examples(record, edit, task_cfg)` and `score(generator, record, task_cfg, batch_size)`.
"""

from __future__ import annotations

from types import ModuleType


def get_task(name: str) -> ModuleType:
    if name == "knowledge":
        from seal.tasks import knowledge

        return knowledge
    raise ValueError(f"unknown task {name!r}")  # config validation rejects this earlier
