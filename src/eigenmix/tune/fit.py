"""Learning a composition's coefficients from a little data.

Two optimisers under one interface, both on a :class:`~eigenmix.compose.Composition`:

- :func:`fit_coefficients`: AdamW on the coefficients (λ, μ, or tied factors), each step
  a minibatch of every task; the objective's value on a held-out split is checked every
  ``eval_every`` steps, and the best coefficients are kept (early stopping).
- :func:`search_module_weights`: LoRAHub's gradient-free search of one weight per module
  (Huang et al. 2024, "LoraHub: Efficient Cross-Task Generalization via Dynamic LoRA
  Composition", https://arxiv.org/abs/2307.13269), with CMA-ES from the ``cma`` package.

Both minimise ``mean over tasks of the objective + reg · composition.penalty()`` and are
seeded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from eigenmix.compose import Composition
from eigenmix.errors import InvalidInputError
from eigenmix.inputs import row_mask
from eigenmix.tune import objectives

Forward = Callable[[str, dict[str, Tensor]], Tensor]  # (task, tokenised batch) → logits (batch, classes)


@dataclass(frozen=True)
class TaskData:
    """A few rows of one task, tokenised and padded together.

    Attributes:
        inputs: the model's input tensors, rows first (a tokenizer's ``(rows, seq)`` ones, or an image batch).
        labels: ``(rows,)`` long, or None (unlabeled).
        teacher: ``(rows, classes)`` the expert's logits, for ``distill``; the starting
            composition's, for the ``entropy`` anchor.
    """

    inputs: dict[str, Tensor]
    labels: Tensor | None = None
    teacher: Tensor | None = None

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def rows(self, index: Tensor) -> TaskData:
        """The rows ``index``; with a mask of real tokens (:func:`eigenmix.inputs.row_mask`), padding columns that none of them
        uses are cut off."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        mask = row_mask(self.inputs)
        if mask is None:
            return TaskData({k: v[index] for k, v in self.inputs.items()}, pick(self.labels), pick(self.teacher))
        width = int(mask[index].sum(1).max())
        return TaskData({k: v[index, :width] for k, v in self.inputs.items()}, pick(self.labels), pick(self.teacher))


class TuneSettings(BaseModel):
    """How coefficients are learned (recorded with every result)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    objective: objectives.Objective = Field("sup", description="sup (labels), entropy or distill (unlabeled; distill: the experts teach)")
    steps: int = Field(60, ge=1, description="most optimiser steps (each: a minibatch of every task)")
    batch_rows: int = Field(16, ge=1, description="rows of each task per step")
    lr: float = Field(0.02, gt=0, description="AdamW learning rate of the coefficients")
    reg: float = Field(0.01, ge=0, description="weight of the squared distance from the starting coefficients")
    anchor: float = Field(0.0, ge=0, description="entropy only: weight of KL(start's mean prediction ‖ mean prediction) per task batch")
    normalize: bool = Field(False, description="entropy only: each task's entropy (and anchor) in units of log(classes)")
    eval_every: int = Field(5, ge=1, description="steps between checks on the validation split")
    patience: int = Field(3, ge=1, description="checks without improvement before stopping")
    select: Literal["loss", "accuracy"] = Field(
        "loss",
        description="what early stopping keeps: the lowest validation objective, or the highest validation accuracy "
        "(against the labels, or for distill the expert's predictions; ties: the lower objective)",
    )
    seed: int = Field(0, description="seeds the minibatches (and CMA-ES)")


@dataclass
class TuneResult:
    """What a tuning run did: the best validation value, when, and how long it took."""

    steps: int
    best_step: int
    best_val: float
    seconds: float
    n_coefficients: int
    history: list[dict[str, float | None]] = field(default_factory=list)


def objective_value(
    comp: Composition,
    forward: Forward,
    data: Mapping[str, TaskData],
    objective: objectives.Objective,
    anchor: float = 0.0,
    normalize: bool = False,
) -> Tensor:
    """Mean over tasks of the objective on ``data`` (differentiable)."""
    values = [objectives.loss(objective, forward(task, d.inputs), d.labels, d.teacher, anchor, normalize) for task, d in data.items()]
    return torch.stack(values).mean()


@torch.no_grad()
def validation_scores(
    forward: Forward, data: Mapping[str, TaskData], objective: objectives.Objective, anchor: float = 0.0, normalize: bool = False
) -> tuple[float, float | None]:
    """(mean objective, mean accuracy) over tasks on ``data``; accuracy is against the labels,
    else (distill) the expert's predictions, else None."""
    values, hits = [], []
    for task, d in data.items():
        logits = forward(task, d.inputs)
        values.append(objectives.loss(objective, logits, d.labels, d.teacher, anchor, normalize))
        target = d.labels if d.labels is not None else d.teacher.argmax(-1) if objective == "distill" else None  # type: ignore[union-attr]
        hits.append(None if target is None else float((logits.argmax(-1) == target).float().mean()))
    return float(torch.stack(values).mean()), None if None in hits else sum(hits) / len(hits)  # type: ignore[arg-type]


def _terms(settings: TuneSettings) -> dict:
    """The objective's arguments in ``settings`` (for :func:`objective_value` and :func:`validation_scores`)."""
    return {"objective": settings.objective, "anchor": settings.anchor, "normalize": settings.normalize}


def _check(data: Mapping[str, TaskData], objective: objectives.Objective, anchor: float = 0.0) -> None:
    if not data:
        raise InvalidInputError("tuning needs rows of at least one task")
    for task, d in data.items():
        if objective == "sup" and d.labels is None:
            raise InvalidInputError(f"task '{task}': the supervised objective needs labels")
        if objective == "distill" and d.teacher is None:
            raise InvalidInputError(f"task '{task}': the distillation objective needs the expert's logits")
        if objective == "entropy" and anchor > 0 and d.teacher is None:
            raise InvalidInputError(f"task '{task}': the entropy anchor needs the starting composition's logits")


def fit_coefficients(
    comp: Composition,
    forward: Forward,
    train: Mapping[str, TaskData],
    val: Mapping[str, TaskData],
    settings: TuneSettings,
    on_step: Callable[[int, float], None] | None = None,
) -> TuneResult:
    """Learn ``comp``'s coefficients; on return they hold the best ones found on ``val``."""
    _check(train, settings.objective, settings.anchor)
    _check(val, settings.objective, settings.anchor)
    if settings.select == "accuracy" and settings.objective == "entropy" and any(d.labels is None for d in val.values()):
        raise InvalidInputError("selecting on validation accuracy with the entropy objective needs labeled validation rows")
    params = [p for p in comp.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    start, history = time.perf_counter(), list[dict[str, float | None]]()

    def validate(step: int) -> tuple[float, float]:
        value, accuracy = validation_scores(forward, val, **_terms(settings))
        history.append({"step": step, "val": value, "val_accuracy": accuracy})
        return (-accuracy, value) if settings.select == "accuracy" and accuracy is not None else (value, -(accuracy or 0.0))

    best_key, best_step, best = validate(0), 0, [p.detach().clone() for p in params]
    checks_without_gain, step = 0, 0
    for step in range(1, settings.steps + 1):
        batch = {t: d.rows(torch.randperm(len(d), generator=generator)[: settings.batch_rows]) for t, d in train.items()}
        loss = objective_value(comp, forward, batch, **_terms(settings)) + settings.reg * comp.penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
        if step % settings.eval_every == 0 or step == settings.steps:
            key = validate(step)
            if key < best_key:
                best_key, best_step, best, checks_without_gain = key, step, [p.detach().clone() for p in params], 0
            else:
                checks_without_gain += 1
                if checks_without_gain >= settings.patience:
                    break
    with torch.no_grad():
        for p, b in zip(params, best, strict=True):
            p.copy_(b)
    best_val = float(next(h["val"] for h in history if h["step"] == best_step))  # type: ignore[arg-type]
    return TuneResult(step, best_step, best_val, time.perf_counter() - start, comp.n_coefficients(), history)


def search_module_weights(
    comp: Composition,
    forward: Forward,
    train: Mapping[str, TaskData],
    settings: TuneSettings,
    budget: int = 60,
    sigma0: float = 0.3,
) -> TuneResult:
    """LoRAHub: CMA-ES over one weight per module (``granularity="module"``), minimising the
    objective on ``train`` (no gradients) within ``budget`` evaluations."""
    import cma

    if comp.granularity != "module" or len(comp.module_names) < 2:
        raise InvalidInputError("the gradient-free search needs a composition of 2+ modules with granularity 'module'")
    _check(train, settings.objective, settings.anchor)
    weights = comp.lam["all"]
    start, history = time.perf_counter(), list[dict[str, float | None]]()

    def value(w: list[float]) -> float:
        with torch.no_grad():
            weights.copy_(torch.tensor(w, dtype=weights.dtype))
            out = float(objective_value(comp, forward, train, **_terms(settings)) + settings.reg * comp.penalty())
        history.append({"step": len(history), "val": out})
        return out

    options = {"seed": settings.seed + 1, "maxfevals": budget, "verbose": -9, "bounds": [-1.5, 2.5]}
    es = cma.CMAEvolutionStrategy(weights.detach().tolist(), sigma0, options)
    es.optimize(value)
    best = es.result.xbest if es.result.xbest is not None else weights.detach().tolist()
    best_val = value(list(best))
    return TuneResult(len(history), len(history), best_val, time.perf_counter() - start, comp.n_coefficients(), history)
