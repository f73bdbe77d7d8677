"""Iso-C: the summed delta with a flat (isotropic) spectrum."""

from __future__ import annotations

import torch

from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.spectral import SVD, LayerSpectra


@register(
    "iso_c",
    params=MergeParams,
    kind="spectral",
    description="SVD of Σ w_k ΔW_k with every singular value replaced by their mean; factored",
    paper="Marczak et al., No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces, ICML 2025",
    url="https://arxiv.org/abs/2502.04959",
    vectors="mean",  # the reference code averages every non-matrix tensor, then applies α
)
def iso_c(layer: LayerSpectra, p: MergeParams, ctx: LayerContext) -> SVD:
    """The mean runs over the numerical rank of the sum: ``min(m, n)`` for full-rank task
    vectors (the paper's setting); for low-rank inputs the zero directions of the sum are
    undefined, so they are left out rather than filled with arbitrary singular vectors."""
    merged = layer.lift(layer.weighted_sum())
    flat = torch.full_like(merged.S, float(merged.S.mean())) if merged.S.numel() else merged.S
    return SVD(merged.U, p.scale * flat, merged.V)
