"""TIES-Merging: trim, elect sign, disjoint merge (element-wise)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from eigenmix.merging.elementwise import ties_merge
from eigenmix.merging.registry import LayerContext, MergeParams, register

Trim = Literal["layer", "global"]


class TiesParams(MergeParams):
    density: float = Field(0.2, gt=0, le=1, description="share of entries each delta keeps (top magnitude); paper: 20%")
    normalize: bool = Field(True, description="divide by the summed weights of agreeing entries (disjoint mean)")
    trim: Trim = Field(
        "layer",
        description="top-k per tensor (mergekit's and PEFT's convention), or over all of a module's entries (the original TIES code)",
    )

    @property
    def trims_globally(self) -> bool:
        return self.trim == "global"


def global_keep(n: int, p: TiesParams) -> int:
    """The original code's rule: ``kthvalue(d − ⌊d·density⌋)`` and ``≥``, i.e. the ``⌊d·density⌋ + 1``
    largest (every entry at ``density = 1``)."""
    return n if p.density >= 1 else int(n * p.density) + 1


@register(
    "ties",
    params=TiesParams,
    kind="elementwise",
    description="trim each delta to its top-k entries, elect a sign per entry, average the agreeing ones (dense per layer)",
    paper="Yadav et al., TIES-Merging: Resolving Interference When Merging Models, NeurIPS 2023",
    url="https://arxiv.org/abs/2306.01708",
    trim_values=lambda deltas, weights, p, ctx: list(deltas),
    keep_count=global_keep,
)
def ties(deltas: Tensor, weights: Tensor, p: TiesParams, ctx: LayerContext) -> Tensor:
    """Args: ``deltas`` (K, *shape), ``weights`` (K,); ``ctx.thresholds`` for ``trim: global``."""
    return p.scale * ties_merge(deltas, weights, density=p.density, normalize=p.normalize, thresholds=ctx.thresholds)
