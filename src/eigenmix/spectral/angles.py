"""Principal angles and subspace overlap between two subspaces.

Cosines come from the singular values of ``Q1ᵀ Q2``; they lose accuracy for small
angles, so angles under 45° are taken from the sines, the singular values of the
residual ``Q2 − Q1 (Q1ᵀ Q2)`` (Björck & Golub 1973; Knyazev & Argentati 2002,
https://doi.org/10.1137/S1064827500377332).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from eigenmix.spectral.rank import numerical_rank


def principal_angles(Q1: Tensor, Q2: Tensor) -> Tensor:
    """Principal angles between ``span(Q1)`` and ``span(Q2)``.

    Args:
        Q1: ``(m, p)`` orthonormal columns.
        Q2: ``(m, q)`` orthonormal columns.

    Returns:
        ``(min(p, q),)`` float64 angles in radians, ascending, in ``[0, π/2]``.
    """
    if Q1.shape[0] != Q2.shape[0]:
        raise ValueError(f"subspaces live in different spaces: {Q1.shape[0]} vs {Q2.shape[0]} rows")
    Q1, Q2 = Q1.to(torch.float64), Q2.to(torch.float64)
    if Q1.shape[1] < Q2.shape[1]:
        Q1, Q2 = Q2, Q1  # now p >= q, and there are q angles
    q = Q2.shape[1]
    if q == 0:
        return torch.zeros(0, dtype=torch.float64)
    M = Q1.T @ Q2
    cos = torch.linalg.svdvals(M).clamp(0.0, 1.0)  # descending -> angles ascending
    sin = torch.linalg.svdvals(Q2 - Q1 @ M).clamp(0.0, 1.0).flip(0)[:q]  # ascending
    small = cos > 1 / math.sqrt(2)
    return torch.where(small, torch.arcsin(sin), torch.arccos(cos))


def subspace_overlap(Q1: Tensor, Q2: Tensor) -> float:
    """Mean squared cosine of the principal angles: ``‖Q1ᵀ Q2‖_F² / min(p, q)``.

    1 when one subspace contains the other, 0 when they are orthogonal; a random pair of
    small subspaces of dimension p, q in R^m has expected overlap ``max(p, q) / m``.
    """
    k = min(Q1.shape[1], Q2.shape[1])
    if k == 0:
        return 0.0
    return float((Q1.to(torch.float64).T @ Q2.to(torch.float64)).square().sum() / k)


def orthonormal_range(M: Tensor, rtol: float) -> Tensor:
    """Orthonormal basis of the numerical range of ``M`` (``(m, p)`` → ``(m, R)``, R ≤ p).

    Thin QR, then an SVD of the small ``R`` factor reveals the rank
    (:func:`~eigenmix.spectral.rank.numerical_rank` at ``rtol``). float64 throughout.
    """
    M = M.to(torch.float64)
    if M.shape[1] == 0:
        return M
    Q, R = torch.linalg.qr(M)  # (m, p'), (p', p)
    Ur, s, _ = torch.linalg.svd(R, full_matrices=False)
    return Q @ Ur[:, : numerical_rank(s, rtol)]


def range_overlap(M1: Tensor, M2: Tensor, rtol: float = 1e-6) -> float:
    """:func:`subspace_overlap` of the numerical ranges (column spaces) of two matrices."""
    return subspace_overlap(orthonormal_range(M1, rtol), orthonormal_range(M2, rtol))
