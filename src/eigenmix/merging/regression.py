"""The regression merges' shared solve, kept factored (pure functions).

For K deltas ``ΔW_k = Q_U X_k Y_kᵀ Q_Vᵀ`` of one layer (the joint basis of
:class:`~eigenmix.spectral.LayerSpectra`) and each task's input Gram ``G_k`` (shrunk:
``G̃_k``), RegMean's update in delta form is

    ΔW* = (Σ_k w_k ΔW_k G̃_k)(Σ_j G̃_j)⁻¹ = Q_U T,     T = Σ_k w_k X_k Z_kᵀ,  Z_k = S⁻¹ G̃_k (Q_V Y_k)

with ``S = Σ_j G̃_j`` summed over every task that reaches the layer (a module that lacks
the layer still contributes its Gram; its target there is the base layer). ``T`` is
``R_U × n`` with ``R_U ≤ Σ_k r_k``: the merged update stays of rank ≤ Σ r_k and no
``m × n`` product is formed; one Cholesky of ``S`` serves every module. Where ``S`` is
singular (fewer tokens than inputs, a dead input) the least-norm solution is taken from
its eigendecomposition, cut at the float32 noise floor of its largest eigenvalue.

With a sketch (Grams in a basis ``B``), every ``n``-vector lives in ``span B``: ``Z_k`` is
solved in ``B``'s coordinates and lifted by ``B``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from eigenmix.merging.statistics import LayerGrams
from eigenmix.spectral import SVD, LayerSpectra, default_rtol, numerical_rank

Normalize = Literal["mean", "sum"]
NOISE = default_rtol(torch.float32)  # Grams are accumulated from float32 activations


@dataclass(frozen=True)
class Shrunk:
    """``G̃ = c · (α G + (1 − α) diag(g))``: ``G``'s off-diagonal entries multiplied by ``α``
    (RegMean's ``reduce_non_diag``), all of it by ``c``; applied without copying ``G``
    (``n × n``). In a sketch (``B``, ``d`` columns) ``G`` is ``Bᵀ G_full B`` and ``g`` the
    full Gram's diagonal, so ``G̃`` is ``Bᵀ G̃_full B`` exactly."""

    G: Tensor
    c: float
    alpha: float
    basis: Tensor | None = None
    diagonal: Tensor | None = None

    def _diag_part(self, Y: Tensor) -> Tensor:
        if self.basis is not None and self.diagonal is not None:
            return self.basis.T @ (self.diagonal[:, None] * (self.basis @ Y))
        return torch.diagonal(self.G)[:, None] * Y

    def __matmul__(self, Y: Tensor) -> Tensor:
        """``G̃ Y`` for ``Y`` (d, q)."""
        out = self.G @ Y
        if self.alpha != 1.0:
            out = self.alpha * out + (1.0 - self.alpha) * self._diag_part(Y)
        return self.c * out

    def add_to(self, S: Tensor) -> None:
        """``S += G̃`` in place."""
        S.add_(self.G, alpha=self.c * self.alpha)
        if self.alpha == 1.0:
            return
        if self.basis is not None and self.diagonal is not None:
            S.add_(self.basis.T @ (self.diagonal[:, None] * self.basis), alpha=self.c * (1.0 - self.alpha))
        else:
            S.diagonal().add_(torch.diagonal(self.G), alpha=self.c * (1.0 - self.alpha))


def shrunk(grams: LayerGrams, alpha: float, normalize: Normalize = "mean") -> list[Shrunk]:
    """Every task's shrunk Gram (members, then the modules that lack the layer)."""
    basis = grams.basis.to(torch.float64) if grams.basis is not None else None
    parts = grams.all(normalize)
    diagonals: list[Tensor | None] = list(grams.diagonals) if grams.diagonals is not None else [None] * len(parts)
    return [Shrunk(G, c, alpha, basis, d) for (G, c), d in zip(parts, diagonals, strict=True)]


def summed(parts: list[Shrunk]) -> Tensor:
    """``S = Σ_j G̃_j`` (one ``d × d`` buffer)."""
    S = torch.zeros_like(parts[0].G)
    for part in parts:
        part.add_to(S)
    return S


@dataclass(frozen=True)
class Root:
    """A square root of the summed Gram ``S ≈ C Cᵀ`` (``C`` (d, q)) and the map of input
    directions: ``inverse_t(W) = C⁺ᵀ W``."""

    C: Tensor
    cholesky: bool

    def inverse_t(self, W: Tensor) -> Tensor:
        if self.cholesky:
            return torch.linalg.solve_triangular(self.C.T, W, upper=True)
        return torch.linalg.pinv(self.C).T @ W


def _spectrum(S: Tensor) -> tuple[Tensor, Tensor]:
    """``(e, V)``: the eigenpairs of ``S`` above the noise floor of its largest eigenvalue."""
    e, V = torch.linalg.eigh(S)
    keep = e > NOISE * e.max().clamp(min=0)
    return e[keep], V[:, keep]


def root(S: Tensor) -> Root:
    """Cholesky factor of ``S``, or ``V diag(√e)`` over its eigenvalues above the noise floor."""
    L, info = torch.linalg.cholesky_ex(S)
    if int(info) == 0:
        return Root(L, True)
    e, V = _spectrum(S)
    return Root(V * e.sqrt(), False)


def solve(S: Tensor, rhs: Tensor, pinv: bool = False) -> Tensor:
    """``S⁻¹ rhs`` by Cholesky, or the least-norm solution where ``S`` is singular (always with ``pinv``)."""
    if not pinv:
        L, info = torch.linalg.cholesky_ex(S)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, L)
    e, V = _spectrum(S)
    return V @ ((V.T @ rhs) / e[:, None])


@dataclass(frozen=True)
class Regression:
    """RegMean's update ``ΔW* = Q_U T Bᵀ`` of one layer.

    Attributes:
        T: ``(R_U, d)`` the update in joint column coordinates × the Grams' row coordinates.
        S: ``(d, d)`` the summed shrunk Gram.
        grams: every task's shrunk Gram (members first, then the others), as summed in ``S``.
    """

    T: Tensor
    S: Tensor
    grams: list[Shrunk]


def row_factors(layer: LayerSpectra, grams: LayerGrams) -> list[Tensor]:
    """Each member's row factor ``Q_V Y_k`` in the Grams' coordinates (``(d, r_k)`` float64)."""
    return [grams.to_rows(layer.project_rows(layer.factors(i)[1].T).T) for i in range(layer.k)]


def regression(layer: LayerSpectra, grams: LayerGrams, *, alpha: float, normalize: Normalize = "mean", pinv: bool = False) -> Regression:
    """RegMean's solve for one layer (module docstring), with module weights ``layer.weights``."""
    parts = shrunk(grams, alpha, normalize)
    S = summed(parts)
    rows = row_factors(layer, grams)
    rhs = torch.cat([float(layer.weights[i]) * (parts[i] @ rows[i]) for i in range(layer.k)], dim=1)  # (d, Σr)
    Z = solve(S, rhs, pinv)
    X = torch.cat([layer.factors(i)[0] for i in range(layer.k)], dim=1)  # (R_U, Σr)
    return Regression(X @ Z.T, S, parts)


def lift_update(layer: LayerSpectra, grams: LayerGrams, left: Tensor, right: Tensor, scale: float = 1.0) -> SVD:
    """The SVD of ``scale · Q_U left rightᵀ Bᵀ`` (``left`` (R_U, q), ``right`` (d, q)), factored."""
    Qr, Rr = torch.linalg.qr(right)
    Uc, S, Vch = torch.linalg.svd(left @ Rr.T, full_matrices=False)
    keep = numerical_rank(S, layer.rtol)
    V = grams.from_rows(Qr @ Vch[:keep].T)
    dtype = layer.row_basis.dtype
    return SVD(layer.lift_columns(Uc[:, :keep]), scale * S[:keep], V.to(dtype))


def regression_svd(layer: LayerSpectra, grams: LayerGrams, solved: Regression, scale: float) -> SVD:
    """The SVD of ``scale · ΔW*`` (``T`` is ``R_U × d`` with ``R_U`` small: one thin SVD)."""
    Uc, S, Vh = torch.linalg.svd(solved.T, full_matrices=False)
    keep = numerical_rank(S, layer.rtol)
    V = grams.from_rows(Vh[:keep].T)
    return SVD(layer.lift_columns(Uc[:, :keep]), scale * S[:keep], V.to(layer.row_basis.dtype))
