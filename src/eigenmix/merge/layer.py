"""One layer's K deltas, decomposed once for every spectral method.

Low-rank deltas are used through their factors; dense ones through a truncated SVD
(exact, or randomized when a rank is given), cut to a share of their energy. The joint
basis spans every module's factors, and the methods work on the coordinates
``P_k = Q_Uᵀ U_k``, ``R_k = Q_Vᵀ V_k`` and cores ``C_k = P_k diag(σ_k) R_kᵀ`` (design
note 4). Nothing here forms an ``m × n`` matrix.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from eigenmix.modules import AnyDelta, LowRankDelta, SpectralDelta, delta_dtype
from eigenmix.spectral import SVD, JointBasis, default_rtol, factored_svd, gram_range_implicit, rank_for_energy, svd


class ImplicitBasis:
    """An orthonormal basis ``Q = X M`` kept as its factors: ``X`` (m × p) the stacked
    module factors in the work dtype, ``M`` (p × R) float64. ``Q @ Y`` costs one
    ``m``-sized product; ``Q`` itself is formed (once) only if asked for."""

    def __init__(self, X: Tensor, M: Tensor) -> None:
        self.X, self.M = X, M
        self._Q: Tensor | None = None

    @property
    def dim(self) -> int:
        return self.M.shape[1]

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
        basis: the joint basis.
        weights: ``(K,)`` per-module weights from the config.
    """

    def __init__(
        self, shape: tuple[int, int], U: ImplicitBasis, V: ImplicitBasis, X: list[Tensor], Y: list[Tensor], weights: Tensor, rtol: float
    ) -> None:
        self.shape, self.weights = shape, weights
        self._U, self._V = U, V
        self._X, self._Y, self._rtol = X, Y, rtol
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
                keep = int((f.S > self._rtol * f.S[0]).sum()) if f.S.numel() and f.S[0] > 0 else 0
                out.append(f.truncate(keep))
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
        Uc, S, Vch = torch.linalg.svd(core, full_matrices=False)
        keep = numerical_rank(S)
        Vt = self._V.apply_rows(Vch[:keep])  # (r, n), contiguous
        return SVD(self._U.apply(Uc[:, :keep]), S[:keep], Vt.T)

    def lift_columns(self, C: Tensor) -> Tensor:
        """``Q_U C`` (m × k) for joint column coordinates ``C`` (R_U × k)."""
        return self._U.apply(C)

    def project_rows(self, Y: Tensor) -> Tensor:
        """``Y Q_Vᵀ`` (k × n) for joint row coordinates ``Y`` (k × R_V)."""
        return self._V.apply_rows(Y)


def numerical_rank(S: Tensor, rtol: float | None = None) -> int:
    """Number of singular values above ``rtol · σ_max`` (float64 roundoff by default)."""
    if S.numel() == 0 or S[0] <= 0:
        return 0
    tol = default_rtol(torch.float64) * max(S.numel(), 1) if rtol is None else rtol
    return int((tol * S[0] < S).sum())


def delta_factors(delta: AnyDelta, *, dense_rank: int | None = None, dense_energy: float = 1.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(L (m, r), Rt (n, r))`` with ``delta = L Rtᵀ``: LoRA factors with the scale folded
    in, spectral ``(U σ, V)``, or a truncated SVD of a dense matrix (randomized to
    ``dense_rank`` when given, exact otherwise; cut to ``dense_energy``)."""
    if isinstance(delta, LowRankDelta):
        return delta.B * delta.scale, delta.A.T
    if isinstance(delta, SpectralDelta):
        return delta.U * delta.S, delta.V
    W = delta.W.to(torch.float64)
    f = svd(W, dense_rank, randomized=dense_rank is not None and 10 * dense_rank < min(W.shape), seed=seed)
    if dense_energy < 1.0:
        f = f.truncate(rank_for_energy(f.S, dense_energy))
    nonzero = int((f.S > default_rtol(delta.W.dtype) * f.S[0]).sum()) if f.S.numel() and f.S[0] > 0 else 0
    f = f.truncate(nonzero)  # zero directions are undefined; unit-normalised they would become noise
    return (f.U * f.S).to(delta.W.dtype), f.V.to(delta.W.dtype)


def work_dtype(deltas: Sequence[AnyDelta]) -> torch.dtype:
    """float32, or float64 if any delta is float64: the dtype of the m-sized products and results."""
    dtype = torch.float32
    for d in deltas:
        dtype = torch.promote_types(dtype, delta_dtype(d))
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def decompose(
    deltas: Sequence[AnyDelta],
    weights: Sequence[float],
    *,
    dense_rank: int | None = None,
    dense_energy: float = 1.0,
    seed: int = 0,
    rtol: float | None = None,
) -> LayerSpectra:
    """Decompose K deltas of one layer into a :class:`LayerSpectra`.

    The joint basis comes from the stacked factors by :func:`eigenmix.spectral.gram_range`
    (BLAS-3, rank-revealing); each module's SVD, where a method needs it, is a factored
    SVD of its ``R × r_k`` coordinates: no ``m × n`` matrix, no per-module ``m``-sized work.
    """
    dtype = work_dtype(deltas)
    tol = default_rtol(dtype) if rtol is None else rtol
    factors = [delta_factors(d, dense_rank=dense_rank, dense_energy=dense_energy, seed=seed) for d in deltas]
    XU = torch.cat([L for L, _ in factors], dim=1).to(dtype)  # (m, Σr)
    XV = torch.cat([Rt for _, Rt in factors], dim=1).to(dtype)  # (n, Σr)
    MU, CU = gram_range_implicit(XU, tol)  # Q_U = XU MU; CU = Q_Uᵀ XU (R_U, Σr)
    MV, CV = gram_range_implicit(XV, tol)
    bounds = torch.cumsum(torch.tensor([0] + [L.shape[1] for L, _ in factors]), 0).tolist()
    X = [CU[:, a:b] for a, b in itertools.pairwise(bounds)]
    Y = [CV[:, a:b] for a, b in itertools.pairwise(bounds)]
    m, n = deltas[0].shape
    w = torch.tensor(list(weights), dtype=torch.float64)
    return LayerSpectra((int(m), int(n)), ImplicitBasis(XU, MU), ImplicitBasis(XV, MV), X, Y, w, tol)
