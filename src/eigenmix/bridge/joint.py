"""Closed-form joint spaces between two spectral bases (the bridge's starts).

Given paired coordinates ``A`` ``(n, k₁)`` (image side) and ``B`` ``(n, k₂)`` (text side),
each start gives projections ``P_a (k₁, r)``, ``P_b (k₂, r)`` into ``r = min(k₁, k₂)`` joint
directions and a strength per direction (descending):

- ``procrustes``: the orthogonal map between the bases, ``AᵀB = P Σ Qᵀ`` → ``P_a = P``,
  ``P_b = Q``; ``a P_a · b P_b = a (P Qᵀ) · b``, Procrustes' rotation; strength ``Σ / n``.
- ``cca``: canonical correlation analysis with ridge ``eps`` (a share of the mean variance
  added to each). In a spectral basis each side's covariance is already diagonal,
  ``AᵀA / n = diag(S_a²) / n``, so whitening is a diagonal scale ``D_a``; then
  ``D_a (AᵀB / n) D_b = P Σ Qᵀ`` → ``P_a = D_a P``, ``P_b = D_b Q``; strength: the canonical
  correlations ``Σ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from eigenmix.errors import InvalidInputError

Start = Literal["procrustes", "cca"]


@dataclass(frozen=True)
class JointStart:
    """Projections of each side's coordinates into the joint directions, and their strength."""

    P_a: Tensor  # (k1, r)
    P_b: Tensor  # (k2, r)
    strength: Tensor  # (r,), descending


def _check_pairs(A: Tensor, B: Tensor) -> None:
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0] or A.shape[0] < 2:
        raise InvalidInputError(
            f"paired coordinates must be (n, k) matrices with the same n ≥ 2, got {tuple(A.shape)} and {tuple(B.shape)}"
        )


def procrustes_start(A: Tensor, B: Tensor) -> JointStart:
    """The orthogonal Procrustes joint space of paired coordinates (see the module docstring)."""
    _check_pairs(A, B)
    P, s, Qh = torch.linalg.svd(A.T.to(torch.float64) @ B.to(torch.float64), full_matrices=False)
    return JointStart(P.contiguous(), Qh.T.contiguous(), s / A.shape[0])


def cca_start(A: Tensor, B: Tensor, eps: float = 0.1) -> JointStart:
    """Ridge CCA of paired coordinates that are centred and uncorrelated within each side
    (a spectral basis's): ``eps`` times the side's mean variance is added to every variance."""
    _check_pairs(A, B)
    if eps < 0:
        raise InvalidInputError(f"eps must be >= 0, got {eps}")
    A, B = A.to(torch.float64), B.to(torch.float64)
    n = A.shape[0]
    va, vb = A.square().sum(0) / n, B.square().sum(0) / n  # (k1,), (k2,): the diagonal covariances
    Da = (va + eps * va.mean()).clamp(min=1e-300).rsqrt()
    Db = (vb + eps * vb.mean()).clamp(min=1e-300).rsqrt()
    P, s, Qh = torch.linalg.svd(Da[:, None] * (A.T @ B / n) * Db[None, :], full_matrices=False)
    return JointStart((Da[:, None] * P).contiguous(), (Db[:, None] * Qh.T).contiguous(), s)


def joint_start(kind: Start, A: Tensor, B: Tensor, eps: float = 0.1) -> JointStart:
    if kind == "procrustes":
        return procrustes_start(A, B)
    if kind == "cca":
        return cca_start(A, B, eps)
    raise InvalidInputError(f"unknown start '{kind}' (procrustes, cca)")
