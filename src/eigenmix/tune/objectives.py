"""The tuning objectives, as pure functions of one task's logits ``(batch, classes)``.

- ``sup``: cross-entropy on labeled examples (each task through its own head).
- ``entropy``: mean prediction entropy on unlabeled inputs (AdaMerging's objective; Yang
  et al. 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning",
  https://arxiv.org/abs/2310.02575).
- ``distill``: ``KL(p_expert ‖ p_composed)`` on unlabeled inputs of a module's task, the
  expert being that module alone on the base model with its own head.
"""

from __future__ import annotations

from typing import Literal

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


def distill(logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean ``KL(teacher ‖ student)`` (nats) per example."""
    return F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(teacher_logits, dim=-1), log_target=True, reduction="batchmean")


def loss(objective: Objective, logits: Tensor, labels: Tensor | None = None, teacher: Tensor | None = None) -> Tensor:
    """The objective's value on one task's batch."""
    if objective == "sup":
        if labels is None:
            raise ValueError("the supervised objective needs labels")
        return supervised(logits, labels)
    if objective == "entropy":
        return entropy(logits)
    if teacher is None:
        raise ValueError("the distillation objective needs the expert's logits")
    return distill(logits, teacher)


__all__ = ["OBJECTIVES", "Objective", "distill", "entropy", "loss", "supervised"]
