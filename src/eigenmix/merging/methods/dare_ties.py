"""DARE-TIES: random drop and rescale, then TIES sign election (element-wise)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from eigenmix.merging.elementwise import bernoulli_mask, dare_ties_merge
from eigenmix.merging.methods.dare import DareParams
from eigenmix.merging.registry import LayerContext, register


class DareTiesParams(DareParams):
    normalize: bool = Field(True, description="disjoint mean (PEFT) rather than disjoint sum (mergekit's default)")


@register(
    "dare_ties",
    params=DareTiesParams,
    kind="elementwise",
    description="DARE's seeded random drop and rescale, then TIES sign election and disjoint merge (dense per layer)",
    paper="Yu et al., Language Models are Super Mario, ICML 2024 (DARE) with Yadav et al., NeurIPS 2023 (TIES)",
    url="https://arxiv.org/abs/2311.03099",
)
def dare_ties(deltas: Tensor, weights: Tensor, p: DareTiesParams, ctx: LayerContext) -> Tensor:
    """Args: ``deltas`` (K, *shape), ``weights`` (K,); ``ctx.rng`` seeds the masks in module order."""
    masks = torch.stack([bernoulli_mask(d.shape, p.density, ctx.rng) for d in deltas])
    return p.scale * dare_ties_merge(deltas, weights, masks, density=p.density, rescale=p.rescale, normalize=p.normalize)
