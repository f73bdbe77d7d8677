"""The test oracle of the joint-basis engine (``eigenmix.spectral.joint``): the textbook
construction by Householder QR and an SVD of the small factor, written independently of
the engine's Gram-matrix route. The engine's tests check it against this.

Joint orthonormal bases for several low-rank deltas, their cores, and reconstruction.

For K deltas ``ΔW_k = B_k A_k`` of one layer, the joint basis is a pair of orthonormal
matrices ``Q_U`` (m × R_U) and ``Q_V`` (n × R_V) that span every module's column and row
space. Each delta is then exactly ``Q_U C_k Q_Vᵀ`` with the small core
``C_k = Q_Uᵀ ΔW_k Q_V`` (R_U × R_V), and every orthogonally invariant operation (sums,
SVDs, spectrum reshaping, Procrustes) can run on the cores alone.

The basis is rank-revealing: each module's own singular vectors are stacked (unit-norm
columns, so modules of very different scale are treated alike), and stacked directions
whose singular value falls below ``rtol`` times the largest are dropped as numerically
dependent on the others. A direction dropped at tolerance ``rtol`` moves a reconstruction
by at most about ``rtol`` relative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from eigenmix.spectral import SVD, JointBasis, factored_svd


def default_rtol(dtype: torch.dtype) -> float:
    return 10 * torch.finfo(dtype).eps


def orthonormal_range(M: Tensor, rtol: float) -> Tensor:
    """Orthonormal basis of the numerical range of ``M``: thin QR, then an SVD of ``R``."""
    M = M.to(torch.float64)
    if M.shape[1] == 0:
        return M
    Q, R = torch.linalg.qr(M)
    Ur, s, _ = torch.linalg.svd(R, full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return M[:, :0]
    return Q @ Ur[:, s > rtol * s[0]]


def module_spectra(factors: Sequence[tuple[Tensor, Tensor]], rtol: float | None = None) -> list[SVD]:
    """Factored SVD of each ``B_k @ A_k``, with numerically zero directions dropped.

    Args:
        factors: K pairs ``(B_k (m, r_k), A_k (r_k, n))``.
        rtol: directions with ``σ ≤ rtol · σ_max`` (of that module) are dropped.

    Returns:
        K float64 ``SVD``s ``(U_k (m, r'_k), σ_k (r'_k,), V_k (n, r'_k))``.
    """
    out = []
    for B, A in factors:
        tol = default_rtol(torch.promote_types(B.dtype, A.dtype)) if rtol is None else rtol
        f = factored_svd(B, A, dtype=torch.float64)
        keep = int((f.S > tol * f.S[0]).sum()) if f.S.numel() and f.S[0] > 0 else 0
        out.append(f.truncate(keep))
    return out


def joint_basis(spectra: Sequence[SVD], rtol: float | None = None) -> JointBasis:
    """Joint orthonormal bases of the column and row spaces of several deltas.

    Args:
        spectra: K thin SVDs ``(U_k (m, r_k), σ_k, V_k (n, r_k))`` of one layer's deltas,
            for instance from :func:`module_spectra`.
        rtol: relative tolerance for dropping dependent directions
            (default :func:`default_rtol` of float32, the usual dtype of adapters).

    Returns:
        ``JointBasis(Q_U (m, R_U), Q_V (n, R_V))`` in float64, ``R_U, R_V ≤ Σ r_k``.
    """
    if not spectra:
        raise ValueError("joint_basis needs at least one module")
    tol = default_rtol(torch.float32) if rtol is None else rtol
    Q_U = orthonormal_range(torch.cat([s.U for s in spectra], dim=1), tol)
    Q_V = orthonormal_range(torch.cat([s.V for s in spectra], dim=1), tol)
    return JointBasis(Q_U, Q_V)


def project(basis: JointBasis, spectrum: SVD) -> tuple[Tensor, Tensor]:
    """Coordinates of one module's singular vectors in the joint basis.

    Returns:
        ``P (R_U, r) = Q_Uᵀ U`` and ``R (R_V, r) = Q_Vᵀ V``; the core is
        ``P diag(σ) Rᵀ`` (see design note 4).
    """
    return basis.Q_U.T @ spectrum.U.to(basis.Q_U.dtype), basis.Q_V.T @ spectrum.V.to(basis.Q_V.dtype)


def core(basis: JointBasis, spectrum: SVD) -> Tensor:
    """The exact core ``C = Q_Uᵀ ΔW Q_V`` (R_U × R_V) of a delta given as its SVD."""
    P, R = project(basis, spectrum)
    return (P * spectrum.S.to(P.dtype)) @ R.T


def cores(basis: JointBasis, spectra: Sequence[SVD]) -> list[Tensor]:
    """The cores of every module in the joint basis (list of ``(R_U, R_V)`` tensors)."""
    return [core(basis, s) for s in spectra]


def reconstruct(basis: JointBasis, C: Tensor) -> Tensor:
    """The dense delta ``Q_U C Q_Vᵀ`` (m × n) of a core ``C`` (R_U × R_V)."""
    return basis.Q_U @ C.to(basis.Q_U.dtype) @ basis.Q_V.T


def core_svd(basis: JointBasis, C: Tensor) -> SVD:
    """SVD of the delta ``Q_U C Q_Vᵀ`` without forming it: SVD of ``C``, lifted by the bases."""
    Uc, S, Vch = torch.linalg.svd(C.to(torch.float64), full_matrices=False)
    return SVD(basis.Q_U @ Uc, S, basis.Q_V @ Vch.T)
