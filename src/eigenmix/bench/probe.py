"""The floor: a linear probe (multinomial logistic regression) on frozen encoder features."""

from __future__ import annotations

from torch import Tensor

from eigenmix.compose.routers.learned import logistic_regression
from eigenmix.harness.evaluator import Head


def fit_probe(features: Tensor, labels: Tensor, num_labels: int, *, l2: float = 1e-4, max_iter: int = 500) -> Head:
    """Full-batch L-BFGS on cross-entropy + ``l2 · ‖W‖²``; deterministic (zero start).

    Args:
        features: ``(N, hidden)`` frozen features.
        labels: ``(N,)`` class indices.
    """
    w, b = logistic_regression(features, labels, num_labels, l2=l2, max_iter=max_iter)
    return Head(w.float(), b.float())
