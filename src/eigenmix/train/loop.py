"""One training loop for an encoder with a linear head per task (one task, or several in turn).

Batches hold rows of similar length (less padding); the learning rate warms up and decays
linearly; every step draws from the next task in turn, so a multi-task run sees each
task equally often. Seeded: the same inputs give the same weights.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from eigenmix.data import Task
from eigenmix.inputs import TextInputs
from eigenmix.seeds import derived_seed

Forward = Callable[[str, dict[str, Tensor]], Tensor]  # (task name, tokenised batch) → logits (batch, classes)


class Schedule(Protocol):
    """What the loop reads of a recipe (``LoraRecipe`` has it, read-only)."""

    @property
    def steps(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def max_length(self) -> int: ...
    @property
    def warmup(self) -> float: ...
    @property
    def dropout(self) -> bool: ...


def fit(
    model: nn.Module,
    forward: Forward,
    tasks: Sequence[Task],
    tokenizer: object,
    groups: list[dict],
    recipe: Schedule,
    *,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[float, float]:
    """Train ``groups`` (AdamW parameter groups with their ``lr``) for ``recipe.steps`` steps.

    Args:
        model: the module whose train/eval mode follows ``recipe.dropout``.
        forward: logits of a batch of one task.
        tasks: the tasks, drawn in turn (step ``s`` uses ``tasks[s % len(tasks)]``).
        recipe: has ``steps``, ``batch_size``, ``max_length``, ``warmup``, ``dropout``.
        seed: seeds the batch order (per task, with the task name).

    Returns:
        ``(seconds, last loss)``.
    """
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    schedule = _schedule(optimizer, recipe.steps, recipe.warmup)
    inputs = TextInputs(tokenizer, recipe.max_length)  # the one tokeniser
    lengths = [[len(e["input_ids"]) for e in inputs.encode(t.train)] for t in tasks]
    batches = [
        _bucketed_batches(n, recipe.batch_size, random.Random(derived_seed(seed, t.name))) for n, t in zip(lengths, tasks, strict=True)
    ]
    model.train(recipe.dropout)
    start, loss_value = time.perf_counter(), float("nan")
    for step in range(recipe.steps):
        task = tasks[step % len(tasks)]
        batch = [task.train[i] for i in next(batches[step % len(tasks)])]
        enc = inputs.batch(batch)
        loss = torch.nn.functional.cross_entropy(forward(task.name, enc), torch.tensor([r.label for r in batch]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_value)
    model.eval()
    return time.perf_counter() - start, loss_value


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up then linear decay to 0 (transformers' schedule); constant if ``warmup == 0``."""
    if warmup == 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, round(warmup * steps), steps)


def _bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, pool: int = 50) -> Iterator[list[int]]:
    """Endless epochs of shuffled batches of rows of similar length (less padding).

    Each epoch shuffles the rows, sorts windows of ``pool`` batches by length, cuts them
    into batches, and shuffles the batches.
    """
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), pool * batch_size):
            window = sorted(order[start : start + pool * batch_size], key=lengths.__getitem__)
            batches += [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
        rng.shuffle(batches)
        yield from batches
