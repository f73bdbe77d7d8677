"""Validation rows carved from a task's training split (seeded), never trained on."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from eigenmix.data import Example, Task
from eigenmix.errors import InvalidInputError
from eigenmix.seeds import derived_seed


@dataclass(frozen=True)
class CarvedTask:
    """A task with a validation split carved from its training rows: ``train`` (what adapters and probes see) without
    ``val``; ``test`` cut to the first ``test_rows``."""

    task: Task
    val: tuple[Example, ...]

    @property
    def name(self) -> str:
        return self.task.name


def carve(task: Task, val_rows: int, test_rows: int, seed: int) -> CarvedTask:
    """Move ``val_rows`` random training rows (seeded by ``seed`` and the task name) to a validation split."""
    if len(task.train) <= val_rows:
        raise InvalidInputError(f"task '{task.name}': {len(task.train)} training rows leave none after {val_rows} validation rows")
    order = list(range(len(task.train)))
    random.Random(derived_seed(seed, task.name)).shuffle(order)
    held = set(order[:val_rows])
    train = tuple(row for i, row in enumerate(task.train) if i not in held)
    val = tuple(task.train[i] for i in sorted(held))
    test = task.test[:test_rows] if test_rows else task.test
    return CarvedTask(replace(task, train=train, test=test), val)
