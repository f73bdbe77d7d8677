"""KnOTS: align the tasks in the SVD basis of their concatenation, then merge the
per-task coefficients with TIES or DARE-TIES."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from eigenmix.merge.elementwise import bernoulli_mask, dare_ties_merge, ties_merge, weighted
from eigenmix.merge.layer import LayerSpectra, numerical_rank
from eigenmix.merge.registry import MergeParams, register
from eigenmix.spectral import SVD, factored_svd


class KnotsParams(MergeParams):
    merge: Literal["ties", "dare_ties", "mean"] = Field("ties", description="how the per-task coefficients are merged")
    density: float = Field(0.2, gt=0, le=1, description="TIES top-k share, or DARE keep probability, of the coefficients")


@register(
    "knots",
    params=KnotsParams,
    kind="spectral",
    description="SVD of the concatenated deltas [ΔW_1 … ΔW_K] = U Σ [V_1 … V_K]ᵀ, TIES/DARE on each task's ΣV_kᵀ; factored",
    paper="Stoica et al., Model merging with SVD to tie the KnOTS, ICLR 2025",
    url="https://arxiv.org/abs/2410.19735",
)
def knots(layer: LayerSpectra, p: KnotsParams, rng: torch.Generator) -> SVD:
    """The concatenation is decomposed in joint coordinates; each task's coefficients
    ``Σ V_kᵀ`` (q × n) are then formed in the input coordinates, where the element-wise
    merge acts as in the paper (per layer here; the reference code trims globally). Only
    ``q × n`` matrices are formed (q ≤ Σ r_k), never ``m × n``."""
    cat = torch.cat([layer.core(i) for i in range(layer.k)], dim=1)  # (R_U, K·R_V)
    Uc, S, Vch = torch.linalg.svd(cat, full_matrices=False)
    q = numerical_rank(S)
    R_V = layer.rank[1]
    reps = torch.stack(
        [layer.project_rows(S[:q, None] * Vch[:q, i * R_V : (i + 1) * R_V]).double() for i in range(layer.k)]
    )  # (K, q, n): each task's Σ V_kᵀ in input coordinates
    if p.merge == "ties":
        merged = ties_merge(reps, layer.weights, density=p.density)
    elif p.merge == "dare_ties":
        masks = torch.stack([bernoulli_mask(r.shape, p.density, rng) for r in reps])
        merged = dare_ties_merge(reps, layer.weights, masks, density=p.density, rescale="inverse_density", normalize=True)
    else:
        merged = weighted(reps, layer.weights).sum(0) / float(layer.weights.sum())
    return factored_svd(layer.lift_columns(Uc[:, :q]).double() * p.scale, merged)  # (m, q) @ (q, n)
