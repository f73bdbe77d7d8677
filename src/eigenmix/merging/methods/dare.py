"""DARE: drop entries at random and rescale, then sum (element-wise)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from eigenmix.merging.elementwise import bernoulli_mask, dare_linear_merge
from eigenmix.merging.registry import LayerContext, MergeParams, register


class DareParams(MergeParams):
    density: float = Field(0.1, gt=0, le=1, description="keep probability of each entry (1 − drop rate); paper: drop 90%")
    rescale: Literal["inverse_density", "l1", "none"] = Field(
        "inverse_density", description="rescale kept entries by 1/density (paper, PEFT) or to the L1 norm (mergekit)"
    )


@register(
    "dare",
    params=DareParams,
    kind="elementwise",
    description="drop each entry with probability 1 − density (seeded), rescale, weighted sum (dense per layer)",
    paper="Yu et al., Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch, ICML 2024",
    url="https://arxiv.org/abs/2311.03099",
)
def dare(deltas: Tensor, weights: Tensor, p: DareParams, ctx: LayerContext) -> Tensor:
    """Args: ``deltas`` (K, *shape), ``weights`` (K,); ``ctx.rng`` seeds the masks in module order."""
    masks = torch.stack([bernoulli_mask(d.shape, p.density, ctx.rng) for d in deltas])
    return p.scale * dare_linear_merge(deltas, weights, masks, density=p.density, rescale=p.rescale)
