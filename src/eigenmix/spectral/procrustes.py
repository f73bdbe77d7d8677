"""Orthogonal Procrustes: the nearest matrix with orthonormal columns (or rows)."""

from __future__ import annotations

import torch
from torch import Tensor


def polar_factor(M: Tensor, rtol: float = 1e-10) -> Tensor:
    """The orthogonal polar factor ``A Bᵀ`` of ``M = A diag(s) Bᵀ`` (thin SVD).

    For full-rank ``M`` it solves ``min ‖M − X‖_F`` over ``X`` with orthonormal columns
    (tall ``M``) or rows (wide ``M``). For rank-deficient ``M`` (modules that share a
    direction exactly) that minimiser is not unique; the factor is then taken on the
    range of ``M`` only (singular values ``≤ rtol · s_max`` dropped), the partial
    isometry that adds no arbitrary directions. Shape ``(p, q)`` → ``(p, q)``.
    """
    A, s, Bh = torch.linalg.svd(M.to(torch.float64), full_matrices=False)
    r = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    return (A[:, :r] @ Bh[:r]).to(M.dtype)
