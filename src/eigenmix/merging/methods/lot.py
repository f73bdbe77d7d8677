"""LOT Merging: per layer, the task-vector fusion that minimises the feature drift
``Σ_k ‖(T − T_k) X_kᵀ‖²`` over a few exemplars per task, in closed form
``T* = (Σ_k T_k X_kᵀX_k)(Σ_k X_kᵀX_k)⁺``.

That is RegMean's solve on task vectors with summed Grams (every exemplar token counts
alike), no shrinkage and the pseudo-inverse, so it runs on the same factored machinery
(:mod:`eigenmix.merging.regression`). Written from the paper: its code could not be
fetched here. Its rule for normalisation layers (scale parameters) is not implemented —
LoRA changes no norm, and the non-matrix tensors of fine-tunes are averaged.
"""

from __future__ import annotations

from eigenmix.merging.methods.regmean import grams_of
from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.merging.regression import regression, regression_svd
from eigenmix.spectral import SVD, LayerSpectra


@register(
    "lot",
    params=MergeParams,
    kind="spectral",
    description="feature-drift least squares over exemplars: (Σ T_k X_kᵀX_k)(Σ X_kᵀX_k)⁺, summed Grams; factored",
    paper="Sun et al., Towards Minimizing Feature Drift in Model Merging: Layer-wise Task Vector Fusion, NeurIPS 2025",
    url="https://arxiv.org/abs/2505.23859",
    vectors="mean",
    calibration="own",
)
def lot(layer: LayerSpectra, p: MergeParams, ctx: LayerContext) -> SVD:
    grams = grams_of(ctx)
    return regression_svd(layer, grams, regression(layer, grams, alpha=1.0, normalize="sum", pinv=True), p.scale)
