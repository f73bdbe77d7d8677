"""One layer's K deltas, decomposed once for every spectral method.

Low-rank deltas are decomposed exactly by the factored SVD; dense ones by a truncated
SVD (exact, or randomized when a rank is given), cut to a share of their energy. The
joint basis then holds every module's singular vectors, and the methods work on the
coordinates ``P_k = Q_Uᵀ U_k``, ``R_k = Q_Vᵀ V_k`` and cores ``C_k = P_k diag(σ_k) R_kᵀ``
(see design note 4). Nothing here forms an ``m × n`` matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from eigenmix.modules import AnyDelta, DenseDelta, LowRankDelta, SpectralDelta
from eigenmix.spectral import SVD, JointBasis, default_rtol, joint_basis, project, rank_for_energy, svd


@dataclass(frozen=True)
class LayerSpectra:
    """K deltas of one ``(m, n)`` layer in a joint basis (all float64).

    Attributes:
        shape: ``(m, n)``.
        spectra: per module, its thin SVD ``(U_k, σ_k, V_k)`` with zero directions dropped.
        basis: the joint basis ``Q_U`` (m × R_U), ``Q_V`` (n × R_V).
        P: per module, ``Q_Uᵀ U_k`` (R_U × r_k).
        R: per module, ``Q_Vᵀ V_k`` (R_V × r_k).
        weights: ``(K,)`` per-module weights from the config.
    """

    shape: tuple[int, int]
    spectra: list[SVD]
    basis: JointBasis
    P: list[Tensor]
    R: list[Tensor]
    weights: Tensor

    @property
    def k(self) -> int:
        return len(self.spectra)

    def core(self, i: int, sigma: Tensor | None = None) -> Tensor:
        """Module i's core ``P_i diag(σ) R_iᵀ`` (R_U × R_V); ``σ`` defaults to its own."""
        s = self.spectra[i].S if sigma is None else sigma
        return (self.P[i] * s) @ self.R[i].T

    def weighted_sum(self) -> Tensor:
        """``Σ_k w_k C_k``, the core of the weighted sum of the deltas."""
        return sum((float(w) * self.core(i) for i, w in enumerate(self.weights)), torch.zeros(self.basis.rank, dtype=torch.float64))

    def lift(self, core: Tensor) -> SVD:
        """The SVD of ``Q_U core Q_Vᵀ`` without forming it (zero directions dropped)."""
        Uc, S, Vch = torch.linalg.svd(core, full_matrices=False)
        keep = numerical_rank(S)
        return SVD(self.basis.Q_U @ Uc[:, :keep], S[:keep], self.basis.Q_V @ Vch[:keep].T)


def numerical_rank(S: Tensor, rtol: float | None = None) -> int:
    """Number of singular values above ``rtol · σ_max`` (float64 roundoff by default)."""
    if S.numel() == 0 or S[0] <= 0:
        return 0
    tol = default_rtol(torch.float64) * max(S.numel(), 1) if rtol is None else rtol
    return int((tol * S[0] < S).sum())


def delta_spectrum(delta: AnyDelta, *, dense_rank: int | None = None, dense_energy: float = 1.0, seed: int = 0) -> SVD:
    """Float64 thin SVD of one delta with numerically zero directions dropped.

    Low-rank and spectral deltas are exact. Dense matrices use the randomized SVD to
    ``dense_rank`` when given (exact SVD otherwise), then keep ``dense_energy`` of the
    spectrum.
    """
    if isinstance(delta, DenseDelta):
        W = delta.W.to(torch.float64)
        f = svd(W, dense_rank, randomized=dense_rank is not None and 10 * dense_rank < min(W.shape), seed=seed)
        if dense_energy < 1.0:
            f = f.truncate(rank_for_energy(f.S, dense_energy))
    else:
        f = delta.spectral().svd.to(torch.float64)
    tol = default_rtol(_stored_dtype(delta))
    keep = int((f.S > tol * f.S[0]).sum()) if f.S.numel() and f.S[0] > 0 else 0
    return f.truncate(keep)


def _stored_dtype(delta: AnyDelta) -> torch.dtype:
    if isinstance(delta, LowRankDelta):
        return delta.A.dtype
    if isinstance(delta, SpectralDelta):
        return delta.U.dtype
    return delta.W.dtype


def decompose(
    deltas: Sequence[AnyDelta],
    weights: Sequence[float],
    *,
    dense_rank: int | None = None,
    dense_energy: float = 1.0,
    seed: int = 0,
    rtol: float | None = None,
) -> LayerSpectra:
    """Decompose K deltas of one layer into a :class:`LayerSpectra`."""
    spectra = [delta_spectrum(d, dense_rank=dense_rank, dense_energy=dense_energy, seed=seed) for d in deltas]
    basis = joint_basis(spectra, rtol=rtol)
    coords = [project(basis, s) for s in spectra]
    m, n = deltas[0].shape
    return LayerSpectra(
        shape=(int(m), int(n)),
        spectra=spectra,
        basis=basis,
        P=[c[0] for c in coords],
        R=[c[1] for c in coords],
        weights=torch.tensor(list(weights), dtype=torch.float64),
    )
