"""Orthogonal Procrustes: the nearest matrix with orthonormal columns (or rows)."""

from __future__ import annotations

import torch
from torch import Tensor


def polar_factor(M: Tensor) -> Tensor:
    """The orthogonal polar factor ``A Bᵀ`` of ``M = A diag(s) Bᵀ`` (thin SVD).

    It is the solution of ``min ‖M − X‖_F`` over ``X`` with orthonormal columns (if
    ``M`` is tall) or rows (if wide). Shape ``(p, q)`` → ``(p, q)``; float64 inside.
    """
    A, _, Bh = torch.linalg.svd(M.to(torch.float64), full_matrices=False)
    return (A @ Bh).to(M.dtype)
