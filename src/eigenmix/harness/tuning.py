"""Tuning on classification tasks, text or images: the frozen base model of
:class:`~eigenmix.harness.evaluator.Evaluator` with one linear head per task on its pooled
features (the models ``eigenmix.train`` and ``eigenmix.vision.train`` make).

Each task contributes ``rows`` training rows (a seeded draw; labels only for ``sup``) and
its validation rows (early stopping on the objective's value there). For ``distill`` the
teacher of a task is its own module alone on the base encoder, with its own head.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from eigenmix.compose import Composition, Granularity, Level
from eigenmix.data import Example
from eigenmix.data.images import ImageExample
from eigenmix.harness.calibration_rows import calibration_source
from eigenmix.harness.evaluator import Evaluator, Head
from eigenmix.harness.splits import CarvedTask
from eigenmix.modules import Module
from eigenmix.tune.fit import TaskData, TuneResult, TuneSettings, fit_coefficients, search_module_weights
from eigenmix.tune.live import Init, build
from eigenmix.tune.starts import get_start

Row = TypeVar("Row", Example, ImageExample)


class TuneSpec(BaseModel):
    """What is learned, from where, with which data budget (recorded with every result)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    init: Init = Field(
        "spectral", description="the merge to start from: spectral, task_arithmetic, or calibrated on the rows: spectral_ls, spectral_align"
    )
    scale: float = Field(1.0, gt=0, description="the starting merge's scale α (multiplies every starting λ)")
    flatten: float = Field(0.0, ge=0, le=1, description="the spectral rule's β (needs level lambda+mu when > 0)")
    level: Level = Field("lambda", description="lambda, or lambda+mu (also the joint spectrum)")
    granularity: Granularity = Field("direction", description="direction (λ each), layer (per module per layer) or module (per module)")
    rows: int = Field(64, ge=1, description="training rows per task")
    search: Literal["adamw", "cma"] = Field("adamw", description="adamw (gradients) or cma (gradient-free, granularity module)")
    budget: int = Field(60, ge=2, description="objective evaluations of the cma search")
    settings: TuneSettings = Field(default_factory=TuneSettings, description="objective, steps, learning rate, regularisation, stopping")


def draw(rows: Sequence[Row], n: int, seed: int) -> list[Row]:
    """``n`` of ``rows`` (seeded by ``seed`` and the number of rows)."""
    return random.Random(seed * 7_919 + len(rows)).sample(list(rows), min(n, len(rows)))


def task_data(ev: Evaluator, rows: Sequence[Row], labeled: bool, teacher: Tensor | None = None) -> TaskData:
    return TaskData(ev.batch(rows), torch.tensor([r.label for r in rows]) if labeled else None, teacher)


def head_logits(ev: Evaluator, head: Head, inputs: dict[str, Tensor]) -> Tensor:
    """``(rows, classes)``: the head on the base model's pooled features."""
    return ev.inputs.pool(ev.encoder(**inputs), inputs) @ head.weight.T + head.bias


def teacher_logits(ev: Evaluator, module: Module, head: Head, rows: Sequence[Row]) -> Tensor:
    """The expert's logits: its own module alone on the base encoder, its own head."""
    ev.apply({layer: d.dense().float() for layer, d in module.layers.items()})
    try:
        with torch.no_grad():
            return head_logits(ev, head, task_data(ev, rows, False).inputs)
    finally:
        ev.apply(None)


def tune_tasks(
    spec: TuneSpec,
    modules: Sequence[Module],
    tasks: Sequence[CarvedTask],
    heads: dict[str, Head],
    ev: Evaluator,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[Composition, TuneResult]:
    """Learn the coefficients of ``modules`` (module k belongs to ``tasks[k]``) on ``ev``'s
    encoder; the hooks stay on ``ev.encoder`` (``Composition.detach_hooks`` removes them)."""
    settings = spec.settings.model_copy(update={"seed": seed})
    labeled, distill = settings.objective == "sup", settings.objective == "distill"
    # validation labels: for sup, and for entropy that stops on accuracy (distill's accuracy is agreement with the experts)
    val_labeled = labeled or (settings.objective == "entropy" and settings.select == "accuracy")
    train, val = {}, {}
    texts: list[list[Any]] = []  # each task's drawn rows: the calibrated starts' statistics
    for t, module in zip(tasks, modules, strict=True):
        rows = draw(t.task.train, spec.rows, seed)
        texts.append(rows)
        train[t.name] = task_data(ev, rows, labeled, teacher_logits(ev, module, heads[t.name], rows) if distill else None)
        val[t.name] = task_data(ev, t.val, val_labeled, teacher_logits(ev, module, heads[t.name], t.val) if distill else None)
    ev.apply(None)
    shape = {"init": spec.init, "scale": spec.scale, "flatten": spec.flatten, "granularity": spec.granularity, "level": spec.level}
    source = None
    kind = get_start(spec.init).calibration
    if kind is not None:  # the start's statistics from the same unlabeled rows
        source = calibration_source(kind, ev.encoder, modules, [ev.batches(x, 16) for x in texts])
    comp = build(ev.encoder, modules, calibration=source, **shape)  # type: ignore[arg-type]

    def forward(task: str, inputs: dict[str, Tensor]) -> Tensor:
        return head_logits(ev, heads[task], inputs)

    if settings.objective == "entropy" and settings.anchor > 0:  # the start's own predictions anchor the marginals
        with torch.no_grad():
            train, val = ({t: replace(d, teacher=forward(t, d.inputs)) for t, d in part.items()} for part in (train, val))

    try:
        if spec.search == "cma":
            result = search_module_weights(comp, forward, train, settings, budget=spec.budget)
        else:
            result = fit_coefficients(comp, forward, train, val, settings, on_step=on_step)
    except BaseException:
        comp.detach_hooks()
        raise
    return comp, result
