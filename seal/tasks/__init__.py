"""Task families, one module each: knowledge (SQuAD-style passages; the synthetic world in
world.py), arc (few-shot ARC; grids and augmentations in arc_grids.py, arc_augment.py). What a
task module provides is `seal.tasks.base.Task`."""

from __future__ import annotations

from seal.tasks import arc, knowledge
from seal.tasks.base import Task

TASKS: dict[str, Task] = {"knowledge": knowledge, "arc": arc}  # type: ignore[dict-item]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}")  # config validation rejects this earlier
    return TASKS[name]
