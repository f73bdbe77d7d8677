"""RegMean: per linear layer, the weights that best reproduce every model's outputs on its
own task's inputs — ``W* = (Σ_k W_k G_k)(Σ_k G_k)⁻¹`` with ``G_k`` the Gram of the layer's
inputs on task k — solved factored in delta form (:mod:`eigenmix.merging.regression`).

Defaults follow the authors' code (bloomberg/dataless-model-merging): per-token mean Grams
(each task counts alike, whatever its row count), every non-matrix tensor averaged, and
α = 1: their code shrinks the off-diagonal entries (``reduce_non_diag``, α multiplies them)
only when a config asks (0.1 or 0.9 in their DeBERTa/RoBERTa NER and emotion configs; their
GLUE configs leave the Gram whole). α = 1 was also the best of 0.5 / 0.9 / 1 on the merge
benchmark's validation rows (``benchmarks/calibrated_ablation.py``). Deviations, written down:
padding tokens are left out of the Grams (the reference code counts them); a singular
summed Gram gets the least-norm solution instead of failing.
"""

from __future__ import annotations

from pydantic import Field

from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.merging.regression import regression, regression_svd
from eigenmix.merging.statistics import LayerGrams
from eigenmix.spectral import SVD, LayerSpectra


class RegMeanParams(MergeParams):
    alpha: float = Field(1.0, ge=0, le=1, description="multiplies each Gram's off-diagonal entries (the reference code's reduce_non_diag)")


def grams_of(ctx: LayerContext) -> LayerGrams:
    """The layer's statistics (the plan checked that the method has a source)."""
    if ctx.grams is None:
        raise ValueError("a calibrated method ran without calibration statistics")
    return ctx.grams


def regmean_layer(layer: LayerSpectra, p: RegMeanParams, ctx: LayerContext) -> SVD:
    grams = grams_of(ctx)
    return regression_svd(layer, grams, regression(layer, grams, alpha=p.alpha), p.scale)


register(
    "regmean",
    params=RegMeanParams,
    kind="spectral",
    description="(Σ ΔW_k G_k)(Σ G_k)⁻¹ from each task's layer-input Grams (own model's inputs); factored, rank ≤ Σ r_k",
    paper="Jin et al., Dataless Knowledge Fusion by Merging Weights of Language Models, ICLR 2023",
    url="https://arxiv.org/abs/2212.09849",
    vectors="mean",  # the reference code averages every parameter without a Gram
    calibration="own",
)(regmean_layer)
