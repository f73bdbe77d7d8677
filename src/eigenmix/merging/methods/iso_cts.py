"""Iso-CTS: a common subspace from the summed delta plus task-specific subspaces, with a
flat spectrum over all of them."""

from __future__ import annotations

import torch
from pydantic import Field

from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.spectral import SVD, LayerSpectra, polar_factor


class IsoCtsParams(MergeParams):
    common_space_fraction: float = Field(0.8, gt=0, le=1, description="share of the dimensions given to the common subspace")


@register(
    "iso_cts",
    params=IsoCtsParams,
    kind="spectral",
    description="top directions of Σ w_k ΔW_k plus each task's top directions outside them, orthogonalised, flat spectrum; factored",
    paper="Marczak et al., No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces, ICML 2025",
    url="https://arxiv.org/abs/2502.04959",
    vectors="mean",  # the reference code averages every non-matrix tensor, then applies α
)
def iso_cts(layer: LayerSpectra, p: IsoCtsParams, ctx: LayerContext) -> SVD:
    """The dimension split follows the reference code: ``d`` dimensions, ``⌊f·d⌋`` common,
    the rest rounded to a multiple of K and shared equally by the tasks. Here ``d`` is the
    joint dimension ``min(R_U, R_V)``, which is ``min(m, n)`` for full-rank task vectors."""
    K = layer.k
    d = min(layer.rank)
    n_task_total = round((d - int(d * p.common_space_fraction)) / K) * K
    n_common = d - n_task_total
    per_task = n_task_total // K
    total = layer.weighted_sum()
    Uc, Sc, Vch = torch.linalg.svd(total, full_matrices=False)
    U_common, S_common, V_common = Uc[:, :n_common], Sc[:n_common], Vch[:n_common].T
    Us, Ss, Vs = [], [], []
    for i in range(K):
        C = float(layer.weights[i]) * layer.core(i)
        C_ts = C - U_common @ (U_common.T @ C)  # remove the common column space
        Ut, St, Vth = torch.linalg.svd(C_ts, full_matrices=False)
        Us.append(Ut[:, :per_task])
        Ss.append(St[:per_task])
        Vs.append(Vth[:per_task].T)
    U_all = polar_factor(torch.cat([*Us, U_common], dim=1), layer.rtol)
    V_all = polar_factor(torch.cat([*Vs, V_common], dim=1), layer.rtol)
    sigma = torch.cat([*Ss, S_common])
    flat = torch.full_like(sigma, float(sigma.mean()))
    return layer.lift(p.scale * (U_all * flat) @ V_all.T)
