"""A fast orthonormal range for tall stacks of factors, by the Gram matrix.

A Householder QR of a tall ``m × p`` matrix costs ``2mp²`` flops at BLAS-2 speed; the
Gram matrix ``XᵀX`` and the product ``X M`` are BLAS-3 and, for ``m = 11008, p = 128``,
about five times faster on a CPU. The eigendecomposition ``XᵀX = W Λ Wᵀ`` (float64)
reveals the rank (``λ ≤ rtol² λ_max`` dropped, the same test as ``s ≤ rtol s_max`` on
singular values), and gives the coordinates of ``X`` in the basis for free:
``Q = X W Λ^{-1/2}`` and ``Qᵀ X = Λ^{1/2} Wᵀ``. A second pass re-orthonormalises when
the kept spectrum is ill-conditioned (as CholeskyQR2 does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from eigenmix.spectral.rank import numerical_rank
from eigenmix.spectral.threads import small_op


def _eig_basis(G: Tensor, rtol: float) -> tuple[Tensor, Tensor]:
    """Eigenpairs of a Gram matrix above the rank threshold: ``(λ (R,), W (p, R))``, descending.

    ``λ`` are squared singular values, so the rule is :func:`numerical_rank` on ``√λ``."""
    with small_op(G):
        lam, W = torch.linalg.eigh(G)
    lam, W = lam.flip(0), W.flip(1)
    keep = numerical_rank(lam.clamp(min=0).sqrt(), rtol)
    return lam[:keep], W[:, :keep]


def gram_range(X: Tensor, rtol: float) -> tuple[Tensor, Tensor]:
    """Orthonormal basis of the numerical range of ``X`` and the coordinates of ``X`` in it.

    Columns are scaled to unit norm for the rank test, so factors of very different
    magnitude count alike; zero columns are ignored.

    Args:
        X: ``(m, p)``.
        rtol: relative tolerance on singular values of the column-normalised ``X``;
            raised to ``2√(p·eps)`` (≈ 3e-7 for p = 128), what the Gram matrix resolves.

    Returns:
        ``M (p, R)`` such that ``Q = X M`` has orthonormal columns spanning the range of
        ``X``, and ``C = Qᵀ X`` (``(R, p)``); both float64. Callers that only need
        ``Q @ Y`` compute ``X @ (M @ Y)``: one ``m``-sized product instead of two.
    """
    X64 = X.to(torch.float64)
    # eigh resolves λ only to about p·eps·λ_max, i.e. singular values to √(p·eps): a
    # tighter tolerance would keep roundoff as directions.
    rtol = max(rtol, 2.0 * (max(X.shape[1], 1) * torch.finfo(torch.float64).eps) ** 0.5)
    if X.shape[1] > X.shape[0]:  # wide (more factors than rows, e.g. full-rank modules): the Gram matrix of the rows
        norms = torch.linalg.vector_norm(X64, dim=0)
        scale = torch.where(norms > 0, 1.0 / norms.clamp(min=1e-300), torch.zeros_like(norms))
        return _wide_range(X64 * scale, rtol, scale, norms)
    G_raw = X64.T @ X64  # (p, p), the one m-sized float64 product
    norms = G_raw.diagonal().clamp(min=0).sqrt()
    scale = torch.where(norms > 0, 1.0 / norms.clamp(min=1e-300), torch.zeros_like(norms))
    G = G_raw * scale[:, None] * scale[None, :]  # Gram matrix of the unit-norm columns
    lam, W = _eig_basis(G, rtol)
    M = W / lam.sqrt()  # (p, R): Q = Xn M
    coords_n = lam.sqrt()[:, None] * W.T  # (R, p) = Qᵀ Xn
    if lam.numel() and lam[-1] < 1e-8 * lam[0]:  # ill-conditioned: one more pass on Q
        G2 = M.T @ G @ M  # = QᵀQ, computed without forming Q
        lam2, W2 = _eig_basis(G2, 1e-12)
        M = M @ (W2 / lam2.sqrt())
        coords_n = (lam2.sqrt()[:, None] * W2.T) @ coords_n
    norms_back = torch.where(scale > 0, norms, torch.zeros_like(norms))
    return scale[:, None] * M, coords_n * norms_back  # Q = X (scale M); coordinates of the original X


def _wide_range(Xn: Tensor, rtol: float, scale: Tensor, norms: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`gram_range` of a wide ``Xn`` (``m < p``, columns unit-norm), from the ``m × m``
    Gram matrix of its rows (``Xn Xnᵀ = U Λ Uᵀ``, so ``Q = U = Xn XnᵀU Λ⁻¹``) instead of the
    ``p × p`` one of its columns: for 8 stacked full-rank 384-wide modules, 384² against 3,072²."""
    lam, U = _eig_basis(Xn @ Xn.T, rtol)
    M = (Xn.T @ U) / lam  # (p, R): Q = Xn M = U
    coords_n = U.T @ Xn  # (R, p) = Qᵀ Xn
    if lam.numel():  # Xn M is U only up to Λ's conditioning: one more pass on Q (cheap: R × R)
        Q = Xn @ M
        lam2, W2 = _eig_basis(Q.T @ Q, 1e-12)
        M = M @ (W2 / lam2.sqrt())
        coords_n = (lam2.sqrt()[:, None] * W2.T) @ coords_n
    norms_back = torch.where(scale > 0, norms, torch.zeros_like(norms))
    return scale[:, None] * M, coords_n * norms_back
