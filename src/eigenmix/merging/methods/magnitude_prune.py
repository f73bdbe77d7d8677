"""Magnitude pruning of each delta, then the weighted sum (element-wise)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from eigenmix.merging.elementwise import magnitude_mask, weighted
from eigenmix.merging.registry import LayerContext, MergeParams, register


class MagnitudePruneParams(MergeParams):
    density: float = Field(0.2, gt=0, le=1, description="share of entries each delta keeps (top magnitude)")


@register(
    "magnitude_prune",
    params=MagnitudePruneParams,
    kind="elementwise",
    description="keep each delta's top-k entries by magnitude, weighted sum (TIES without sign election; dense per layer)",
    paper="Yadav et al., TIES-Merging, NeurIPS 2023 (the trim step); PEFT's magnitude_prune",
    url="https://arxiv.org/abs/2306.01708",
)
def magnitude_prune(deltas: Tensor, weights: Tensor, p: MagnitudePruneParams, ctx: LayerContext) -> Tensor:
    """Args: ``deltas`` (K, m, n), ``weights`` (K,). Returns the merged ``(m, n)`` delta."""
    trimmed = torch.stack([d * magnitude_mask(d, p.density) for d in deltas])
    return p.scale * weighted(trimmed, weights).sum(0)
