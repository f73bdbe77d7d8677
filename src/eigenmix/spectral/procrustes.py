"""Orthogonal Procrustes: the nearest matrix with orthonormal columns (or rows)."""

from __future__ import annotations

import torch
from torch import Tensor

from eigenmix.spectral.rank import numerical_rank


def polar_factor(M: Tensor, rtol: float) -> Tensor:
    """The orthogonal polar factor ``A Bᵀ`` of ``M = A diag(s) Bᵀ`` (thin SVD).

    For full-rank ``M`` it solves ``min ‖M − X‖_F`` over ``X`` with orthonormal columns
    (tall ``M``) or rows (wide ``M``). For rank-deficient ``M`` (modules that share a
    direction exactly) that minimiser is not unique; the factor is then taken on the
    numerical range of ``M`` only (:func:`~eigenmix.spectral.rank.numerical_rank` at
    ``rtol``, the tolerance of the data's dtype), the partial isometry that adds no
    arbitrary directions. Shape ``(p, q)`` → ``(p, q)``.
    """
    A, s, Bh = torch.linalg.svd(M.to(torch.float64), full_matrices=False)
    r = numerical_rank(s, rtol)
    return (A[:, :r] @ Bh[:r]).to(M.dtype)
