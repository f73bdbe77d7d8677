"""A routed pass over a split, and the few rows per task that routers may learn from."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from eigenmix.compose import Library, RoutedModel, Router
from eigenmix.harness.evaluator import Evaluator, Split
from eigenmix.harness.splits import CarvedTask
from eigenmix.seeds import derived_seed


@torch.no_grad()
def routed_pass(ev: Evaluator, library: Library, router: Router, split: Split, given: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(features (N, hidden), routing (N, K))`` in the split's row order: the routed
    model's pooled features (``inputs.pool``), and each row's coefficients over the library
    (averaged over tokens and layers). ``given`` ``(N, K)``: per-row coefficients (row order)."""
    model = RoutedModel(ev.encoder, library, router)
    features, routing, start = [], [], 0
    try:
        for batch in split.batches:
            rows = split.order[start : start + next(iter(batch.values())).shape[0]]
            start += len(rows)
            out = model(**batch, given=given[rows] if given is not None else None)
            features.append(ev.inputs.pool(out, batch))
            routing.append(model.routing())
    finally:
        model.detach_hooks()
    f, g = torch.empty(len(split.order), features[0].shape[1]), torch.empty(len(split.order), len(library))
    f[split.order], g[split.order] = torch.cat(features), torch.cat(routing)
    return f, g


def routing_accuracy(routing: Tensor, split: Split, library: Library) -> dict[str, float]:
    """Per task: the share of its rows whose largest coefficient is its own module's."""
    top = routing.argmax(-1)
    out = {}
    for name, (start, end) in split.spans.items():
        out[name] = float((top[start:end] == library.names.index(name)).float().mean())
    return out


def task_rows(task: CarvedTask, n: int, seed: int) -> tuple[Any, ...]:
    """A seeded draw of ``n`` training rows of ``task`` (never its validation or test rows)."""
    rows = list(task.task.train)
    return tuple(random.Random(derived_seed(seed, f"{task.name}/compose")).sample(rows, min(n, len(rows))))


def one_batch(ev: Evaluator, rows: Sequence[Any]) -> dict[str, Tensor]:
    """``rows`` as one batch (text: padded)."""
    return ev.batch(rows)


def own_task(split: Split, library: Library) -> Tensor:
    """``(N, K)``: each row's own task's module (the oracle's coefficients)."""
    given = torch.zeros(len(split.order), len(library))
    for name, (start, end) in split.spans.items():
        given[start:end, library.names.index(name)] = 1.0
    return given
