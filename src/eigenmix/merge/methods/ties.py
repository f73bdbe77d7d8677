"""TIES-Merging: trim, elect sign, disjoint merge (element-wise)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from eigenmix.merge.elementwise import ties_merge
from eigenmix.merge.registry import MergeParams, register


class TiesParams(MergeParams):
    density: float = Field(0.2, gt=0, le=1, description="share of entries each delta keeps (top magnitude); paper: 20%")
    normalize: bool = Field(True, description="divide by the summed weights of agreeing entries (disjoint mean)")


@register(
    "ties",
    params=TiesParams,
    kind="elementwise",
    description="trim each delta to its top-k entries, elect a sign per entry, average the agreeing ones (dense per layer)",
    paper="Yadav et al., TIES-Merging: Resolving Interference When Merging Models, NeurIPS 2023",
    url="https://arxiv.org/abs/2306.01708",
)
def ties(deltas: Tensor, weights: Tensor, p: TiesParams, rng: torch.Generator) -> Tensor:
    """Args: ``deltas`` (K, m, n), ``weights`` (K,). Returns the merged ``(m, n)`` delta."""
    return p.scale * ties_merge(deltas, weights, density=p.density, normalize=p.normalize)
