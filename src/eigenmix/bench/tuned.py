"""Tuned entries of the merge benchmark: coefficients learned from a few rows per task.

Every entry starts from a data-free merge at the scale this run chose for it on
validation, learns on ``rows`` training rows per task (seeded draw; labels only for
``sup``), stops early on the objective's value over the carved validation rows, and is
then tested like every merge. The entries and their baselines share that data budget:

- ``spectral+tune(…)``: λ per module direction (eigenmix), from the ``spectral`` merge;
- ``adamerging``: one coefficient per module per layer, entropy, from Task Arithmetic
  (AdaMerging's layer-wise variant);
- ``lorahub(n=16)``: one weight per module, CMA-ES on the labeled rows, from Task
  Arithmetic (LoRAHub).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from eigenmix.bench.evaluator import Evaluator, Head
from eigenmix.bench.splits import BenchTask
from eigenmix.data import Example
from eigenmix.modules import Module
from eigenmix.train.encoder import mean_pool
from eigenmix.tune import TaskData, TuneSettings, build, fit_coefficients, search_module_weights
from eigenmix.tune.objectives import Objective


class TunedEntry(BaseModel):
    """One tuned entry: where it starts, what it learns, from how many rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    init: Literal["spectral", "task_arithmetic"]
    granularity: Literal["direction", "layer", "module"]
    objective: Objective
    rows: int
    search: Literal["adamw", "cma"] = "adamw"


TUNED: dict[str, TunedEntry] = {
    "spectral+tune(sup,n=16)": TunedEntry(init="spectral", granularity="direction", objective="sup", rows=16),
    "spectral+tune(sup,n=64)": TunedEntry(init="spectral", granularity="direction", objective="sup", rows=64),
    "spectral+tune(entropy)": TunedEntry(init="spectral", granularity="direction", objective="entropy", rows=64),
    "spectral+tune(distill)": TunedEntry(init="spectral", granularity="direction", objective="distill", rows=64),
    "adamerging": TunedEntry(init="task_arithmetic", granularity="layer", objective="entropy", rows=64),
    "lorahub(n=16)": TunedEntry(init="task_arithmetic", granularity="module", objective="sup", rows=16, search="cma"),
}
TUNE_SETTINGS = TuneSettings()
LORAHUB_BUDGET = 60  # objective evaluations (LoRAHub's default is 40 steps of its optimiser)


def draw(task: BenchTask, rows: int, seed: int) -> list[Example]:
    """``rows`` training rows of ``task`` (seeded; the validation rows are not among them)."""
    rng = random.Random(seed * 7_919 + len(task.task.train))
    return rng.sample(list(task.task.train), min(rows, len(task.task.train)))


def _task_data(ev: Evaluator, rows: Sequence[Example], labeled: bool, teacher: Tensor | None) -> TaskData:
    pairs = [r.text_pair or "" for r in rows] if any(r.text_pair is not None for r in rows) else None
    enc = ev.tokenizer([r.text for r in rows], pairs, padding=True, truncation=True, max_length=ev.max_length, return_tensors="pt")  # type: ignore[operator]
    labels = torch.tensor([r.label for r in rows]) if labeled else None
    return TaskData(dict(enc), labels, teacher)


def _logits(ev: Evaluator, head: Head, inputs: dict[str, Tensor]) -> Tensor:
    return mean_pool(ev.encoder(**inputs).last_hidden_state, inputs["attention_mask"]) @ head.weight.T + head.bias


def _teacher(ev: Evaluator, module: Module, head: Head, rows: Sequence[Example]) -> Tensor:
    """The expert's logits: its own adapter alone on the base encoder, its own head."""
    ev.apply({layer: d.dense().float() for layer, d in module.layers.items()})
    with torch.no_grad():
        out = _logits(ev, head, _task_data(ev, rows, False, None).inputs)
    ev.apply(None)
    return out


def run_tuned(
    name: str,
    modules: list[Module],
    tasks: list[BenchTask],
    heads: dict[str, Head],
    ev: Evaluator,
    scale: float,
    seed: int,
) -> tuple[dict[str, float], dict]:
    """Tune entry ``name`` and test it; returns (per-task test accuracy, what it did)."""
    entry = TUNED[name]
    settings = TUNE_SETTINGS.model_copy(update={"objective": entry.objective, "seed": seed})
    labeled = entry.objective == "sup"
    train, val = {}, {}
    for t, module in zip(tasks, modules, strict=True):
        rows = draw(t, entry.rows, seed)
        distill = entry.objective == "distill"
        train[t.name] = _task_data(ev, rows, labeled, _teacher(ev, module, heads[t.name], rows) if distill else None)
        val[t.name] = _task_data(ev, t.val, labeled, _teacher(ev, module, heads[t.name], t.val) if distill else None)
    start = time.perf_counter()
    ev.apply(None)
    comp = build(ev.encoder, modules, init=entry.init, scale=scale, granularity=entry.granularity)

    def forward(task: str, inputs: dict[str, Tensor]) -> Tensor:
        return _logits(ev, heads[task], inputs)

    if entry.search == "cma":
        result = search_module_weights(comp, forward, train, settings.model_copy(update={"reg": 0.0}), budget=LORAHUB_BUDGET)
    else:
        result = fit_coefficients(comp, forward, train, val, settings)
    seconds = time.perf_counter() - start
    try:
        per_task = ev.accuracies(ev.tokenize({t.name: t.task.test for t in tasks}), heads)
    finally:
        comp.detach_hooks()
    info = {
        "entry": entry.model_dump(),
        "start_scale": scale,
        "settings": settings.model_dump(),
        "n_coefficients": result.n_coefficients,
        "tune_seconds": round(seconds, 1),
        "steps": result.steps,
        "best_step": result.best_step,
    }
    return per_task, info
