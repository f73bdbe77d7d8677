"""The exact weighted sum (or average) of the deltas."""

from __future__ import annotations

from pydantic import Field

from eigenmix.merging.continual import SUM
from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.spectral import SVD, LayerSpectra


class LinearParams(MergeParams):
    normalize: bool = Field(False, description="divide by the sum of the weights (weighted average)")


@register(
    "linear",
    params=LinearParams,
    kind="spectral",
    description="Σ w_k ΔW_k exactly (unlike PEFT's 'linear', which mixes A and B separately); factored",
    paper="Wortsman et al., Model soups, ICML 2022 (weight averaging)",
    url="https://arxiv.org/abs/2203.05482",
    vectors=lambda p: "weighted_mean" if p.normalize else "sum",  # as its matrices
    continual=SUM,
    linear_map=True,
)
def linear(layer: LayerSpectra, p: LinearParams, ctx: LayerContext) -> SVD:
    core = layer.weighted_sum()
    if p.normalize:
        core = core / float(layer.weights.sum())
    return layer.lift(p.scale * core)
