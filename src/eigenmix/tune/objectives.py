"""The tuning objectives, as pure functions of one task's logits ``(batch, classes)``.

- ``sup``: cross-entropy on labeled examples (each task through its own head).
- ``entropy``: mean prediction entropy on unlabeled inputs (AdaMerging's objective; Yang
  et al. 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning",
  https://arxiv.org/abs/2310.02575), optionally plus ``anchor · KL(p̄_0 ‖ p̄)``: the batch's
  mean prediction ``p̄`` held to that of the starting composition ``p̄_0`` (its logits passed
  as ``teacher``). Still label- and expert-free; it stops entropy minimisation from pushing a
  task's predictions onto one class, the collapse that the class-marginal terms of
  test-time adaptation guard against (Liang et al. 2020, SHOT, use a uniform marginal).
- ``distill``: ``KL(p_expert ‖ p_composed)`` on unlabeled inputs of a module's task, the
  expert being that module alone on the base model with its own head.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

Objective = Literal["sup", "entropy", "distill"]
OBJECTIVES: tuple[Objective, ...] = ("sup", "entropy", "distill")


def supervised(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy; ``labels`` ``(batch,)`` long."""
    return F.cross_entropy(logits, labels)


def entropy(logits: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of the predicted distributions."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def marginal_shift(logits: Tensor, start_logits: Tensor) -> Tensor:
    """``KL(p̄_0 ‖ p̄)`` (nats) between the batch-mean predictions of the start and now."""
    p0 = F.softmax(start_logits, dim=-1).mean(0)
    logp = torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])
    return (p0 * (p0.clamp_min(1e-12).log() - logp)).sum()


def distill(logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean ``KL(teacher ‖ student)`` (nats) per example."""
    return F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(teacher_logits, dim=-1), log_target=True, reduction="batchmean")


def loss(
    objective: Objective,
    logits: Tensor,
    labels: Tensor | None = None,
    teacher: Tensor | None = None,
    anchor: float = 0.0,
    normalize: bool = False,
) -> Tensor:
    """The objective's value on one task's batch (``anchor``: entropy's marginal term, whose
    reference logits come as ``teacher``; ``normalize``: entropy and anchor in units of
    ``log(classes)``, so that tasks with many classes do not outweigh binary ones)."""
    if objective == "sup":
        if labels is None:
            raise ValueError("the supervised objective needs labels")
        return supervised(logits, labels)
    if objective == "entropy":
        if anchor > 0 and teacher is None:
            raise ValueError("the entropy objective's anchor needs the starting composition's logits")
        value = entropy(logits) + (anchor * marginal_shift(logits, teacher) if anchor > 0 else 0.0)  # type: ignore[arg-type]
        return value / math.log(logits.shape[-1]) if normalize else value
    if teacher is None:
        raise ValueError("the distillation objective needs the expert's logits")
    return distill(logits, teacher)


__all__ = ["OBJECTIVES", "Objective", "distill", "entropy", "loss", "marginal_shift", "supervised"]
