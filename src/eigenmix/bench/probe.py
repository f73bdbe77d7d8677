"""The floor: a linear probe (multinomial logistic regression) on frozen encoder features."""

from __future__ import annotations

import torch
from torch import Tensor

from eigenmix.harness.evaluator import Head


def fit_probe(features: Tensor, labels: Tensor, num_labels: int, *, l2: float = 1e-4, max_iter: int = 500) -> Head:
    """Full-batch L-BFGS on cross-entropy + ``l2 · ‖W‖²``; deterministic (zero start).

    Args:
        features: ``(N, hidden)`` frozen features.
        labels: ``(N,)`` class indices.
    """
    x = features.double()
    w = torch.zeros(num_labels, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_labels, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, labels) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Head(w.detach().float(), b.detach().float())
