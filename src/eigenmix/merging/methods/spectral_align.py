"""Spectral alignment: RegMean's aligned update, re-spectralised in the metric of the
tasks' inputs.

**Why.** Reweighting the modules' own directions (``spectral_ls``) cannot remove
interference that lives in the row spaces: task j's inputs excite module k's directions
whatever their λ. RegMean's solve ``ΔW* = (Σ_k w_k ΔW_k G̃_k) S⁻¹`` *rotates* the row space
away from the inputs the other tasks use, which is where its gain comes from. What it does
not control is the spectrum of the result: the solve averages shared directions down, as a
plain mean does, and the data-free rules show (Iso-C) that lifting the weak directions of
a merge helps.

**The rule.** The size of a direction that matters is its size *on the tasks' inputs*:
with ``S = C Cᵀ`` (Cholesky), ``‖ΔW x‖`` summed over every task's tokens is
``‖ΔW C‖_F``. So take the SVD in that metric,

    ΔW* C = U diag(ν) Wᵀ      ⇔      ΔW* = U diag(ν) W̃ᵀ,   W̃ = C⁻ᵀ W

(``U``: output directions, orthonormal; ``W̃``: input directions, orthonormal in the metric
``S``; ``ν``: each direction's response over the calibration tokens), and flatten those
eigenvalues part of the way, ``μ_j = (ν̄ / ν_j)^β`` over the non-zero ones:

    ΔW = U diag(μ ⊙ ν) W̃ᵀ

β = 0 is RegMean exactly; β = 1 gives every direction the same response. The settings
were chosen on the merge benchmark's validation rows (``benchmarks/calibrated_ablation.py``):
β = 0.25 with α = 1 (no shrinkage), on each model's own inputs (RegMean's statistics: 93.99
normalized on validation, against 93.74 on RegMean++'s merged-model inputs and 93.65 for
RegMean itself; differences of a validation row or two, so read them as "no worse"). Because the metric is the inputs', a direction
the tasks' inputs barely excite is not confused with a weak one. Each direction's
**task shares** ``s_kj = w̃_jᵀ G̃_k w̃_j`` (they add up to 1 over the tasks) say which task's
inputs it serves: :func:`aligned_spectrum` returns directions, eigenvalues, coefficients
and shares for ``tune/`` (a start whose λ are the μ) and for reports. The result stays
factored: ``U`` lies in the joint column space (rank ≤ R_U ≤ Σ r_k) and no ``m × n``
product is formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor

from eigenmix.merging.methods.regmean import grams_of
from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.merging.regression import lift_update, regression, root
from eigenmix.merging.statistics import LayerGrams
from eigenmix.spectral import SVD, LayerSpectra, numerical_rank


class SpectralAlignParams(MergeParams):
    alpha: float = Field(1.0, ge=0, le=1, description="multiplies each Gram's off-diagonal entries (RegMean's shrinkage)")
    flatten: float = Field(0.25, ge=0, le=1, description="β: 0 is RegMean++, 1 gives every aligned direction the same response")


@dataclass(frozen=True)
class AlignedSpectrum:
    """One layer's aligned update ``ΔW = Q_U U diag(μ ⊙ ν) W̃ᵀ Bᵀ`` (ρ directions).

    Attributes:
        U: ``(R_U, ρ)`` output directions in joint column coordinates (orthonormal).
        W: ``(d, ρ)`` input directions in the Grams' coordinates (orthonormal in ``S``).
        nu: ``(ρ,)`` each direction's response on the calibration inputs (non-increasing).
        mu: ``(ρ,)`` the coefficients β gives them.
        shares: ``(K_all, ρ)`` each task's share of each direction (members, then the
            modules that lack the layer, as :class:`LayerGrams` orders them); columns add to 1.
    """

    U: Tensor
    W: Tensor
    nu: Tensor
    mu: Tensor
    shares: Tensor


def aligned_spectrum(layer: LayerSpectra, grams: LayerGrams, alpha: float, flatten: float) -> AlignedSpectrum:
    """The aligned directions and coefficients of one layer (module docstring)."""
    solved = regression(layer, grams, alpha=alpha)
    r = root(solved.S)
    Uc, nu, Wh = torch.linalg.svd(solved.T @ r.C, full_matrices=False)
    keep = numerical_rank(nu, layer.rtol)
    Uc, nu, W = Uc[:, :keep], nu[:keep], r.inverse_t(Wh[:keep].T)
    mu = (nu.mean() / nu) ** flatten if keep else nu
    shares = torch.stack([((G @ W) * W).sum(0) for G in solved.grams]) if keep else torch.zeros(len(solved.grams), 0)
    return AlignedSpectrum(Uc, W, nu, mu, shares)


@register(
    "spectral_align",
    params=SpectralAlignParams,
    kind="spectral",
    description="RegMean's aligned update, its spectrum in the inputs' metric flattened by β; factored (eigenmix)",
    paper="eigenmix (this library): activation-aware spectral alignment; derivation in eigenmix.merging.methods.spectral_align",
    url=None,
    vectors="mean",
    calibration="own",
)
def spectral_align(layer: LayerSpectra, p: SpectralAlignParams, ctx: LayerContext) -> SVD:
    grams = grams_of(ctx)
    a = aligned_spectrum(layer, grams, p.alpha, p.flatten)
    return lift_update(layer, grams, a.U * (a.mu * a.nu), a.W, p.scale)
