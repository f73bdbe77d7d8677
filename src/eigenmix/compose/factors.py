"""One layer's composition as factors whose middle is the learned spectrum (pure functions).

For K modules of one ``(m, n)`` layer in their joint basis (design note 4), every module
direction ``σ_ki u_ki v_kiᵀ`` is kept as a column of two stacked factors:

    left  = Q_U [P_1 … P_K]   (m, D)      right = Q_V [R_1 … R_K]   (n, D),   D = Σ_k r_k

so the composition with module spectra λ (one per column) is

    ΔW(λ) = left diag(λ ⊙ σ) rightᵀ                                  (level "lambda")

The second level reweights the joint spectrum of the composition at its starting point
``λ0``: with ``M(λ0) = Um diag(ν) Vmᵀ`` (joint coordinates), its left directions ``Um``
are kept fixed and

    ΔW(λ, μ) = Q_U Um diag(μ) Umᵀ M(λ) Q_Vᵀ                            (level "lambda+mu")

which at ``λ = λ0`` is exactly ``Q_U Um diag(μ ⊙ ν) Vmᵀ Q_Vᵀ`` (design note 4's μ).
Holding ``Um`` fixed, instead of re-taking the SVD of ``M(λ)`` every step, keeps μ's
meaning stable while λ moves and avoids differentiating through an SVD whose singular
values may be nearly equal (unstable gradients). A step costs ``T·D·(m + n)`` per layer
(``T`` tokens) and never forms an ``m × n`` matrix: for the 384 × 1536 linears of
all-MiniLM-L6-v2 with ``D = 64`` and a 16 × 32-token batch this is 63 M multiply-adds,
against 38 M to form ``ΔW`` plus 302 M to apply it densely.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from eigenmix.spectral import LayerSpectra


@dataclass(frozen=True)
class LayerFactors:
    """The frozen factors of one layer's composition (shapes in the module docstring).

    Attributes:
        left: ``(m, D)`` ``Q_U P``, the work dtype.
        right: ``(n, D)`` ``Q_V R``, the work dtype.
        sigma: ``(D,)`` the module singular values ``σ`` (float64).
        owner: ``(D,)`` long, the module of each direction.
        lam0: ``(D,)`` the starting λ (float64).
        mu_left: ``(m, J)`` ``Q_U Um`` (level "lambda+mu" only).
        mu_proj: ``(J, D)`` ``Umᵀ P`` (level "lambda+mu" only).
        mu0: ``(J,)`` the starting μ (float64; level "lambda+mu" only).
        kernel: a conv layer's kernel shape (its matrix view is ``(m, n)``), for export.
    """

    left: Tensor
    right: Tensor
    sigma: Tensor
    owner: Tensor
    lam0: Tensor
    mu_left: Tensor | None = None
    mu_proj: Tensor | None = None
    mu0: Tensor | None = None
    kernel: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[0]

    @property
    def n_directions(self) -> int:
        return self.sigma.shape[0]

    def mu_pieces(self) -> tuple[Tensor, Tensor]:
        """``(mu_left, mu_proj)``; an error for factors built without μ."""
        if self.mu_left is None or self.mu_proj is None:
            raise ValueError("these factors were built without μ (level 'lambda')")
        return self.mu_left, self.mu_proj


def layer_factors(layer: LayerSpectra, lambdas: list[Tensor], mu: Tensor | None = None, owners: list[int] | None = None) -> LayerFactors:
    """The factors of ``layer`` with starting coefficients ``lambdas`` (per module ``(r_k,)``;
    module weights already folded in) and, for the second level, ``mu`` (``(J,)``).
    ``owners[k]`` numbers the layer's k-th module among all modules (default ``k``)."""
    owners = list(range(layer.k)) if owners is None else owners
    P, R = torch.cat(layer.P, dim=1), torch.cat(layer.R, dim=1)  # (R_U, D), (R_V, D) float64
    sigma = torch.cat(layer.sigma)
    owner = torch.cat([torch.full((len(s),), owners[k], dtype=torch.long) for k, s in enumerate(layer.sigma)])
    lam0 = torch.cat([torch.as_tensor(x, dtype=torch.float64) for x in lambdas])
    left, right = layer.lift_columns(P), layer.project_rows(R.T).T  # (m, D), (n, D)
    if mu is None:
        return LayerFactors(left, right, sigma, owner, lam0)
    Um, _, _ = torch.linalg.svd((P * (lam0 * sigma)) @ R.T, full_matrices=False)  # M(λ0) = Um diag(ν) Vmᵀ
    J = mu.shape[0]
    return LayerFactors(left, right, sigma, owner, lam0, layer.lift_columns(Um[:, :J]), Um[:, :J].T @ P, mu.to(torch.float64))


def apply_delta(x: Tensor, f: LayerFactors, lam: Tensor, mu: Tensor | None = None) -> Tensor:
    """``x ΔW(λ, μ)ᵀ`` for ``x`` ``(…, n)`` → ``(…, m)``, never forming ``ΔW``."""
    z = (x @ f.right) * (lam * f.sigma).to(x.dtype)  # (…, D)
    if mu is None:
        return z @ f.left.T
    mu_left, mu_proj = f.mu_pieces()
    return ((z @ mu_proj.T.to(x.dtype)) * mu.to(x.dtype)) @ mu_left.T  # (…, J) → (…, m)


def composed_factors(f: LayerFactors, lam: Tensor, mu: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(L (m, D), Rt (n, D))`` with ``ΔW(λ, μ) = L Rtᵀ`` (for export; float64 middle)."""
    scaled = f.right * (lam * f.sigma).to(f.right.dtype)  # (n, D)
    if mu is None:
        return f.left, scaled
    mu_left, mu_proj = f.mu_pieces()
    return mu_left @ (mu[:, None] * mu_proj).to(mu_left.dtype), scaled
