"""The joint-basis engine: K deltas of one layer in one orthonormal basis.

For K deltas ``ΔW_k = L_k R_kᵀ`` of one ``(m, n)`` layer (LoRA factors with the scale folded
in, or the ``(U σ, V)`` of a truncated SVD), the joint basis is a pair of orthonormal
matrices ``Q_U`` (m × R_U) and ``Q_V`` (n × R_V) that span every module's column and row
space. Each delta is then exactly ``Q_U X_k Y_kᵀ Q_Vᵀ`` with small coordinates
``X_k = Q_Uᵀ L_k`` and ``Y_k = Q_Vᵀ R_k``, and every orthogonally invariant operation (sums,
SVDs, spectrum reshaping, Procrustes) runs on the ``R × R`` cores ``C_k = X_k Y_kᵀ`` (design
note 4). Nothing here forms an ``m × n`` matrix.

The basis comes from the stacked factors by :func:`eigenmix.spectral.gram.gram_range`
(BLAS-3, rank-revealing); a stacked direction whose singular value falls below ``rtol``
times the largest (unit-norm columns, so modules of very different scale count alike) is
dropped as numerically dependent on the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from eigenmix.spectral.factored import SVD, factored_svd
from eigenmix.spectral.gram import gram_range
from eigenmix.spectral.rank import numerical_rank
from eigenmix.spectral.threads import small_op


class JointBasis(NamedTuple):
    """Orthonormal bases of the summed column and row spaces of several deltas.

    Attributes:
        Q_U: ``(m, R_U)`` orthonormal columns spanning every module's column space.
        Q_V: ``(n, R_V)`` orthonormal columns spanning every module's row space.
    """

    Q_U: Tensor
    Q_V: Tensor

    @property
    def rank(self) -> tuple[int, int]:
        """``(R_U, R_V)``: the joint column and row ranks."""
        return self.Q_U.shape[1], self.Q_V.shape[1]


class ImplicitBasis:
    """An orthonormal basis ``Q = X M`` kept as its factors: ``X`` (m × p) the stacked
    module factors in the work dtype, ``M`` (p × R) float64. ``Q @ Y`` costs one
    ``m``-sized product; ``Q`` itself is formed (once) only if asked for."""

    def __init__(self, X: Tensor, M: Tensor) -> None:
        self.X, self.M = X, M
        self._Q: Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.M.shape[1])

    def apply(self, Y: Tensor) -> Tensor:
        """``Q @ Y`` for a small ``Y`` (R × k), in the work dtype."""
        return self.X @ (self.M @ Y.to(torch.float64)).to(self.X.dtype)

    def apply_rows(self, Y: Tensor) -> Tensor:
        """``Y Qᵀ`` for ``Y`` (k × R): a contiguous ``(k, m)`` result, no transposed copy."""
        return (Y.to(torch.float64) @ self.M.T).to(self.X.dtype) @ self.X.T

    @property
    def Q(self) -> Tensor:
        if self._Q is None:
            self._Q = self.X @ self.M.to(self.X.dtype)
        return self._Q


class LayerSpectra:
    """K deltas of one ``(m, n)`` layer in a joint basis.

    The joint basis ``Q_U`` (m × R_U), ``Q_V`` (n × R_V) is stored in the work dtype (the
    inputs' float dtype: the only ``m``- and ``n``-sized products run in it); everything
    else is small and float64. Each delta is ``ΔW_k = Q_U X_k Y_kᵀ Q_Vᵀ`` with factor
    coordinates ``X_k`` (R_U × r_k), ``Y_k`` (R_V × r_k); the per-module SVDs of those
    (``P_k``, ``σ_k``, ``R_k``) are computed on first use, since several methods need
    only the cores.

    Attributes:
        shape: ``(m, n)``.
        weights: ``(K,)`` float64 per-module weights.
        rtol: the rank tolerance of the inputs' dtype; every rank cut of this layer uses it.
    """

    def __init__(
        self, shape: tuple[int, int], U: ImplicitBasis, V: ImplicitBasis, X: list[Tensor], Y: list[Tensor], weights: Tensor, rtol: float
    ) -> None:
        self.shape, self.weights, self.rtol = shape, weights, rtol
        self._U, self._V = U, V
        self._X, self._Y = X, Y
        self._svd: list[SVD] | None = None

    @property
    def basis(self) -> JointBasis:
        """The joint basis ``(Q_U, Q_V)``, formed on first use (most methods never need it)."""
        return JointBasis(self._U.Q, self._V.Q)

    @property
    def k(self) -> int:
        return len(self._X)

    @property
    def rank(self) -> tuple[int, int]:
        """``(R_U, R_V)``: the joint dimensions."""
        return self._U.dim, self._V.dim

    def _module_svds(self) -> list[SVD]:
        if self._svd is None:
            out = []
            for X, Y in zip(self._X, self._Y, strict=True):
                f = factored_svd(X, Y.T, dtype=torch.float64)  # SVD of this module's core
                out.append(f.truncate(numerical_rank(f.S, self.rtol)))
            self._svd = out
        return self._svd

    @property
    def sigma(self) -> list[Tensor]:
        """Per module, its singular values ``σ_k`` (r_k,), zero directions dropped."""
        return [f.S for f in self._module_svds()]

    @property
    def P(self) -> list[Tensor]:
        """Per module, ``Q_Uᵀ U_k`` (R_U × r_k): its left singular vectors in joint coordinates."""
        return [f.U for f in self._module_svds()]

    @property
    def R(self) -> list[Tensor]:
        """Per module, ``Q_Vᵀ V_k`` (R_V × r_k)."""
        return [f.V for f in self._module_svds()]

    def core(self, i: int, sigma: Tensor | None = None) -> Tensor:
        """Module i's core ``C_i = Q_Uᵀ ΔW_i Q_V`` (R_U × R_V), or ``P_i diag(σ) R_iᵀ``."""
        if sigma is None:
            return self._X[i] @ self._Y[i].T
        f = self._module_svds()[i]
        return (f.U * sigma) @ f.V.T

    def weighted_sum(self) -> Tensor:
        """``Σ_k w_k C_k``, the core of the weighted sum of the deltas."""
        X = torch.cat([float(w) * x for w, x in zip(self.weights, self._X, strict=True)], dim=1)
        return X @ torch.cat(self._Y, dim=1).T

    def lift(self, core: Tensor) -> SVD:
        """The SVD of ``Q_U core Q_Vᵀ`` without forming it (zero directions dropped).

        ``V`` is returned as the transpose of a contiguous ``(r, n)`` matrix, so that the
        balanced LoRA factor ``A = √σ Vᵀ`` needs no copy.
        """
        with small_op(core):
            Uc, S, Vch = torch.linalg.svd(core, full_matrices=False)
        keep = numerical_rank(S, self.rtol)
        Vt = self._V.apply_rows(Vch[:keep])  # (r, n), contiguous
        return SVD(self._U.apply(Uc[:, :keep]), S[:keep], Vt.T)

    @property
    def row_basis(self) -> Tensor:
        """``Q_V`` (n × R_V), formed on first use."""
        return self._V.Q

    def factors(self, i: int) -> tuple[Tensor, Tensor]:
        """Module i's factor coordinates ``(X_i (R_U, r_i), Y_i (R_V, r_i))``: ``ΔW_i = Q_U X_i Y_iᵀ Q_Vᵀ``."""
        return self._X[i], self._Y[i]

    def lift_columns(self, C: Tensor) -> Tensor:
        """``Q_U C`` (m × k) for joint column coordinates ``C`` (R_U × k)."""
        return self._U.apply(C)

    def project_rows(self, Y: Tensor) -> Tensor:
        """``Y Q_Vᵀ`` (k × n) for joint row coordinates ``Y`` (k × R_V)."""
        return self._V.apply_rows(Y)


def decompose(factors: Sequence[tuple[Tensor, Tensor]], weights: Sequence[float] | Tensor, rtol: float) -> LayerSpectra:
    """K deltas ``ΔW_k = L_k R_kᵀ`` of one layer in their joint basis.

    The basis spans the stacked factors, which hold every delta's column and row space
    (the same spaces when each ``L_k``, ``R_k`` has full column rank, as trained LoRA
    factors and truncated SVDs do).

    Args:
        factors: K pairs ``(L_k (m, r_k), R_k (n, r_k))`` in one float dtype (the work dtype).
        weights: ``(K,)`` per-module weights.
        rtol: the rank tolerance (:func:`~eigenmix.spectral.rank.default_rtol` of the inputs' dtype).
    """
    if not factors:
        raise ValueError("decompose needs at least one delta")
    XU = torch.cat([L for L, _ in factors], dim=1)  # (m, Σr)
    XV = torch.cat([R for _, R in factors], dim=1)  # (n, Σr)
    MU, CU = gram_range(XU, rtol)  # Q_U = XU MU; CU = Q_Uᵀ XU (R_U, Σr)
    MV, CV = gram_range(XV, rtol)
    bounds = list(itertools.accumulate([0] + [L.shape[1] for L, _ in factors]))
    X = [CU[:, a:b] for a, b in itertools.pairwise(bounds)]
    Y = [CV[:, a:b] for a, b in itertools.pairwise(bounds)]
    w = torch.as_tensor(weights, dtype=torch.float64)
    return LayerSpectra((int(XU.shape[0]), int(XV.shape[0])), ImplicitBasis(XU, MU), ImplicitBasis(XV, MV), X, Y, w, rtol)
