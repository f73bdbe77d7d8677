"""eigenmix's spectral merge: every module's singular directions in one joint basis,
each weighted by how much it collides with the other modules.

**The rule.** Module k's direction i is the rank-one update ``σ_ki u_ki v_kiᵀ``. It
interferes with module j only where j writes to the same outputs *and* reads the same
inputs, so its collision with j is the product of two squared cosines,
``a_kij = ‖U_jᵀ u_ki‖² · ‖V_jᵀ v_ki‖²`` (in [0, 1]; 1 when j contains the direction).
Its coefficient is

    λ_ki = 1 / (1 + Σ_{j≠k} a_kij)

A direction only one module has keeps λ = 1 (the full update, as in Task Arithmetic
with λ = 1); a direction that n modules share exactly gets 1/n from each, so it is
counted once (as in averaging) instead of n times. The merged core is
``M = Σ_k w_k P_k diag(λ_k ⊙ σ_k) R_kᵀ``. A second, optional level reweights the joint
spectrum of ``M = Um diag(ν) Vmᵀ`` by ``μ_j = (ν̄ / ν_j)^β``: β = 0 keeps it, β = 1
flattens it (Iso-C's isotropy), values between interpolate.

**Why it should beat TSV-M and Iso-CTS.** Both reshape every direction to fight
interference: TSV-M rotates all singular vectors to be mutually orthogonal (Procrustes),
which also moves the directions of modules that did not collide; Iso-CTS flattens the
whole spectrum, which discards each module's own ranking of its directions. The rule
here changes only the directions that actually overlap, and by exactly the measured
overlap, so a module-specific direction reaches the merged model unchanged. Whether this
wins on real adapters is measured by ``eigenmix bench merge``, not assumed.

**Coefficients.** λ (one per module direction) and μ (one per joint direction) are
returned by :func:`spectral_coefficients` and consumed by :func:`compose`, so a later
step can learn them from data, starting from this rule.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.spectral import SVD, LayerSpectra, numerical_rank


class SpectralParams(MergeParams):
    flatten: float = Field(0.0, ge=0, le=1, description="β: 0 keeps the joint spectrum, 1 flattens it (isotropic)")


def collision(layer: LayerSpectra) -> list[Tensor]:
    """``Σ_{j≠k} a_kij`` for every module k, direction i (list of ``(r_k,)`` tensors)."""
    out = []
    for k in range(layer.k):
        total = torch.zeros(layer.P[k].shape[1], dtype=torch.float64)
        for j in range(layer.k):
            if j != k:
                col = (layer.P[j].T @ layer.P[k]).square().sum(0)  # ‖U_jᵀ u_ki‖² per i
                row = (layer.R[j].T @ layer.R[k]).square().sum(0)  # ‖V_jᵀ v_ki‖² per i
                total += col * row
        out.append(total)
    return out


def spectral_coefficients(layer: LayerSpectra, flatten: float = 0.0) -> tuple[list[Tensor], Tensor]:
    """The data-free coefficients: λ per module direction, μ per joint direction.

    Returns:
        ``(lambdas, mu)``: ``lambdas[k]`` is ``(r_k,)``; ``mu`` is ``(min(R_U, R_V),)``,
        the weights of the singular directions of the λ-merged core (all ones for β = 0).
    """
    lambdas = [1.0 / (1.0 + c) for c in collision(layer)]
    nu = torch.linalg.svdvals(merged_core(layer, lambdas))
    if flatten == 0 or nu.numel() == 0:
        return lambdas, torch.ones_like(nu)
    positive = torch.arange(nu.numel()) < numerical_rank(nu, layer.rtol)
    mean = nu[positive].mean() if bool(positive.any()) else torch.tensor(0.0, dtype=nu.dtype)
    mu = torch.where(positive, (mean / nu.clamp(min=1e-300)) ** flatten, torch.ones_like(nu))
    return lambdas, mu


def merged_core(layer: LayerSpectra, lambdas: list[Tensor]) -> Tensor:
    """``Σ_k w_k P_k diag(λ_k ⊙ σ_k) R_kᵀ`` (R_U × R_V)."""
    return sum(
        (float(layer.weights[k]) * layer.core(k, lambdas[k] * layer.sigma[k]) for k in range(layer.k)),
        torch.zeros(layer.rank, dtype=torch.float64),
    )


def compose(layer: LayerSpectra, lambdas: list[Tensor], mu: Tensor | None = None) -> SVD:
    """The delta ``Q_U Um diag(μ ⊙ ν) Vmᵀ Q_Vᵀ`` for given coefficients (factored)."""
    M = merged_core(layer, lambdas)
    if mu is None:
        return layer.lift(M)
    Um, nu, Vmh = torch.linalg.svd(M, full_matrices=False)
    return layer.lift((Um * (mu * nu)) @ Vmh)


@register(
    "spectral",
    params=SpectralParams,
    kind="spectral",
    description="joint basis; each module direction weighted 1/(1 + its overlap with the others), optional flattening; factored",
    paper="eigenmix (this library): overlap-weighted spectral composition; rule and rationale in eigenmix.merging.methods.spectral",
    url=None,
    vectors="sum",  # a vector has no directions to collide: Task Arithmetic's sum, which the rule gives unshared directions
)
def spectral(layer: LayerSpectra, p: SpectralParams, ctx: LayerContext) -> SVD:
    lambdas, mu = spectral_coefficients(layer, p.flatten)
    merged = compose(layer, lambdas, mu if p.flatten > 0 else None)
    return SVD(merged.U, p.scale * merged.S, merged.V)
