"""KnOTS: align the tasks in the SVD basis of their concatenation, then merge the per-task
coefficients with TIES or DARE-TIES.

Per layer, ``[ΔW_1 … ΔW_K] = U Σ [V_1 … V_K]ᵀ``; task k's coefficients are ``Σ V_kᵀ``
(q × n, q ≤ Σ r_k), merged element-wise and lifted back by ``U``. As in the reference code
(``gstoica27/KnOTS``, ``task_merger.py`` and ``masking_ops.py``):

- the TIES top-k runs over the flattened coefficients of *all* layers of a task
  (``trim: global``, the default; ``trim: layer`` trims each layer on its own), keeping the
  ``⌊N·density⌋ + 1`` largest magnitudes (``kthvalue`` and ``≥``; every entry at density 1);
- KnOTS-DARE drops coefficients with probability ``1 − dare_keep`` (the reference's
  ``dare_pruning_coeffs: 0.1`` keeps 90%), rescales the kept ones by ``1/dare_keep``, then
  TIES at top-k 100% (no trim): sign of the sum, mean of the agreeing entries;
- defaults are the reference's ViT configs: top-k 20% for KnOTS-TIES, 100% for KnOTS-DARE.

The reference merges LoRA products only. Tensors that are not matrices get the same
element-wise merge applied to themselves (there is no SVD basis to align them in); with
``trim: global`` their entries join their module's top-k.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from eigenmix.merging.elementwise import bernoulli_mask, ties_merge, weighted
from eigenmix.merging.methods.ties import Trim
from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.spectral import SVD, LayerSpectra, factored_svd, numerical_rank


class KnotsParams(MergeParams):
    merge: Literal["ties", "dare_ties", "mean"] = Field("ties", description="how the per-task coefficients are merged")
    density: float | None = Field(
        None, gt=0, le=1, description="TIES top-k share of the coefficients; default 0.2 for ties, 1.0 (no trim) for dare_ties"
    )
    dare_keep: float = Field(0.9, gt=0, le=1, description="DARE keep probability of each coefficient (merge: dare_ties)")
    trim: Trim = Field("global", description="top-k over all layers of a module (the reference's), or per layer")

    @property
    def top_k(self) -> float:
        return self.density if self.density is not None else (0.2 if self.merge == "ties" else 1.0)

    @property
    def trims_globally(self) -> bool:
        return self.trim == "global" and self.merge != "mean" and self.top_k < 1


def representations(layer: LayerSpectra) -> tuple[Tensor, Tensor]:
    """``(U (R_U × q) in joint coordinates, reps (K, q, n))``: the concatenation's left
    singular vectors and each task's coefficients ``Σ V_kᵀ`` in input coordinates (only
    ``q × n`` matrices are formed, never ``m × n``)."""
    cat = torch.cat([layer.core(i) for i in range(layer.k)], dim=1)  # (R_U, K·R_V)
    Uc, S, Vch = torch.linalg.svd(cat, full_matrices=False)
    q = numerical_rank(S, layer.rtol)
    R_V = layer.rank[1]
    reps = torch.stack([layer.project_rows(S[:q, None] * Vch[:q, i * R_V : (i + 1) * R_V]).double() for i in range(layer.k)])
    return Uc[:, :q], reps


def dropped(reps: Tensor, p: KnotsParams, ctx: LayerContext) -> Tensor:
    """KnOTS-DARE's drop and rescale of the coefficients ``(K, …)`` (unchanged otherwise)."""
    if p.merge != "dare_ties":
        return reps
    masks = torch.stack([bernoulli_mask(r.shape, p.dare_keep, ctx.rng) for r in reps])
    return reps * masks / p.dare_keep


def merge_coefficients(reps: Tensor, weights: Tensor, p: KnotsParams, ctx: LayerContext) -> Tensor:
    """The element-wise merge of stacked coefficients (or vectors) ``(K, …)``."""
    if p.merge == "mean":
        return weighted(reps, weights).sum(0) / float(weights.sum())
    return ties_merge(dropped(reps, p, ctx), weights, density=p.top_k, thresholds=ctx.thresholds)


def _trim_values(*inputs: object) -> list[Tensor]:
    """The values the global top-k runs over: a layer's coefficients (after DARE's drop),
    or a vector's entries."""
    *args, p, ctx = inputs
    values = representations(args[0])[1] if isinstance(args[0], LayerSpectra) else args[0]
    return list(dropped(values, p, ctx))  # type: ignore[arg-type]


def _keep(n: int, p: KnotsParams) -> int:
    return int(n * p.top_k) + 1


def _vectors(p: KnotsParams) -> Literal["method"]:
    return "method"


@register(
    "knots",
    params=KnotsParams,
    kind="spectral",
    description="SVD of the concatenated deltas [ΔW_1 … ΔW_K] = U Σ [V_1 … V_K]ᵀ, TIES/DARE on each task's ΣV_kᵀ; factored",
    paper="Stoica et al., Model merging with SVD to tie the KnOTS, ICLR 2025",
    url="https://arxiv.org/abs/2410.19735",
    vectors=_vectors,
    trim_values=_trim_values,
    keep_count=_keep,
)
def knots(*inputs: object) -> SVD | Tensor:
    """``knots(layer, p, ctx)`` for a matrix layer; ``knots(vectors (K, n), weights, p, ctx)``
    for a non-matrix tensor (the same element-wise merge, no SVD)."""
    *args, p, ctx = inputs
    assert isinstance(p, KnotsParams) and isinstance(ctx, LayerContext)
    if not isinstance(args[0], LayerSpectra):
        vectors, weights = args
        return p.scale * merge_coefficients(vectors, weights, p, ctx)  # type: ignore[arg-type]
    layer = args[0]
    U, reps = representations(layer)
    merged = merge_coefficients(reps, layer.weights, p, ctx)
    return factored_svd(layer.lift_columns(U).double() * p.scale, merged)  # (m, q) @ (q, n)
