"""TSV-M: per-task truncation, then Procrustes orthogonalisation of the concatenated
singular vectors."""

from __future__ import annotations

import torch
from pydantic import Field

from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.spectral import SVD, LayerSpectra, polar_factor


class TsvParams(MergeParams):
    fraction: float | None = Field(None, gt=0, le=1, description="share of min(m, n) each task keeps; default 1/K (the paper's choice)")


@register(
    "tsv",
    params=TsvParams,
    kind="spectral",
    description="keep each task's top min(m,n)/K singular triplets, orthogonalise the stacked U and V (Procrustes); factored",
    paper="Gargiulo et al., Task Singular Vectors: Reducing Task Interference in Model Merging, CVPR 2025",
    url="https://arxiv.org/abs/2412.00081",
    vectors="mean",  # the reference code averages every non-matrix tensor, then applies α
)
def tsv(layer: LayerSpectra, p: TsvParams, ctx: LayerContext) -> SVD:
    """Each task keeps ``⌊fraction · min(m, n)⌋`` triplets (capped at its own rank); the
    stacked ``U`` and ``V`` are replaced by their polar factors, computed in joint
    coordinates (``Q_U`` is orthonormal, so the polar factor commutes with it)."""
    fraction = p.fraction if p.fraction is not None else 1.0 / layer.k
    keep = max(1, int(fraction * min(layer.shape)))
    Us, Ss, Vs = [], [], []
    for i, sigma in enumerate(layer.sigma):
        t = min(keep, sigma.numel())
        Us.append(layer.P[i][:, :t])
        Vs.append(layer.R[i][:, :t])
        Ss.append(float(layer.weights[i]) * sigma[:t])
    U_perp = polar_factor(torch.cat(Us, dim=1), layer.rtol)  # (R_U, T)
    V_perp = polar_factor(torch.cat(Vs, dim=1), layer.rtol)  # (R_V, T)
    core = (U_perp * torch.cat(Ss)) @ V_perp.T
    return layer.lift(p.scale * core)
