"""STAR: spectral truncation of each task to a share of its nuclear norm, rescaled."""

from __future__ import annotations

import torch
from pydantic import Field

from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.spectral import SVD, LayerSpectra


class StarParams(MergeParams):
    eta: float = Field(0.4, gt=0, le=1, description="share of each task's nuclear norm its kept directions must reach")


@register(
    "star",
    params=StarParams,
    kind="spectral",
    description="truncate each task to the top directions holding η of its nuclear norm, rescale to the full norm, average; factored",
    paper="Lee et al., STAR: Spectral Truncation and Rescale for Model Merging, NAACL 2025",
    url="https://arxiv.org/abs/2502.10339",
    vectors="mean",  # STAR averages the truncated tasks; a vector has nothing to truncate
)
def star(layer: LayerSpectra, p: StarParams, ctx: LayerContext) -> SVD:
    core = torch.zeros(layer.rank, dtype=torch.float64)
    for i, sigma in enumerate(layer.sigma):
        if sigma.numel() == 0:
            continue
        share = torch.cumsum(sigma, 0) / sigma.sum()
        r = min(int((share < p.eta - 1e-12).sum()) + 1, sigma.numel())
        kept = sigma[:r] * (sigma.sum() / sigma[:r].sum())  # same nuclear norm as before truncation
        core += float(layer.weights[i]) * (layer.P[i][:, :r] * kept) @ layer.R[i][:, :r].T
    return layer.lift(p.scale * core / layer.k)
