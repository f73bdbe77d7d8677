"""SVD of a low-rank product ``B @ A`` without forming the ``m × n`` matrix.

``B = Q_B R_B`` and ``Aᵀ = Q_A R_A`` (thin QR), then the small core ``R_B R_Aᵀ`` (at most
``r × r``) has the SVD ``Uc Sc Vcᵀ``, so ``B A = (Q_B Uc) Sc (Q_A Vc)ᵀ``. The cost is
``O((m + n) r² + r³)`` instead of ``O(m n min(m, n))``. Every step runs in float64: the
QR factors are cheap at rank r and float64 keeps small singular values accurate.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from eigenmix.spectral.threads import small_op


class SVD(NamedTuple):
    """A thin SVD ``M = U diag(S) Vᵀ``.

    Attributes:
        U: ``(m, k)`` orthonormal columns.
        S: ``(k,)`` singular values, non-increasing, non-negative.
        V: ``(n, k)`` orthonormal columns (note: ``V``, not ``Vᵀ``).
    """

    U: Tensor
    S: Tensor
    V: Tensor

    def to(self, dtype: torch.dtype) -> SVD:
        """Cast all three factors to ``dtype``."""
        return SVD(self.U.to(dtype), self.S.to(dtype), self.V.to(dtype))

    def truncate(self, k: int) -> SVD:
        """Keep the ``k`` leading singular triplets."""
        return SVD(self.U[:, :k], self.S[:k], self.V[:, :k])

    def dense(self) -> Tensor:
        """Form ``U diag(S) Vᵀ``, shape ``(m, n)``."""
        return (self.U * self.S) @ self.V.T


def factored_svd(B: Tensor, A: Tensor, *, dtype: torch.dtype | None = None) -> SVD:
    """Thin SVD of ``B @ A`` from its factors.

    Args:
        B: ``(m, r)`` left factor.
        A: ``(r, n)`` right factor.
        dtype: dtype of the result; defaults to the promoted dtype of ``B`` and ``A``.
            The computation itself always runs in float64.

    Returns:
        ``SVD(U (m, k), S (k,), V (n, k))`` with ``k = min(m, n, r)``. Singular values of a
        rank-deficient product are returned as (numerical) zeros, not dropped.
    """
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"factored_svd needs B (m, r) and A (r, n); got {tuple(B.shape)} and {tuple(A.shape)}")
    out_dtype = dtype or torch.promote_types(B.dtype, A.dtype)
    Qb, Rb = torch.linalg.qr(B.to(torch.float64))  # (m, p), (p, r), p = min(m, r)
    Qa, Ra = torch.linalg.qr(A.T.to(torch.float64))  # (n, q), (q, r), q = min(n, r)
    core = Rb @ Ra.T  # (p, q)
    with small_op(core):
        Uc, S, Vch = torch.linalg.svd(core, full_matrices=False)
    return SVD(Qb @ Uc, S, Qa @ Vch.T).to(out_dtype)
