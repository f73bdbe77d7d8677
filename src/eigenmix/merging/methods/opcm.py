"""OPCM: orthogonal projection-based continual merging (Tang et al., NeurIPS 2025), as the
reference code implements it (FusionBench ``fusion_bench/method/opcm/opcm.py``, commit
54c9e8c; parity in ``tests/fixtures/opcm_reference.json``).

Task vectors arrive one at a time. The first is the merge (``M_1 = τ_1``, ``λ_1 = 1``). For
each next ``τ_t``, per matrix layer, with ``M_{t−1} = U Σ Vᵀ`` and ``P = Uᵀ τ_t V``: the
diagonal of ``P`` and its leading ``r × r`` block are removed, ``r`` being the number of
leading singular values of ``M_{t−1}`` whose cumulative share of ``Σ σ`` is at most ``alpha``;
so ``τ̃ = τ_t − U Z Vᵀ`` with ``Z`` those entries. Then ``S_t = λ_{t−1} M_{t−1} + τ̃`` (vectors:
``+ τ_t``), ``λ_t = ‖S_t‖ / mean(‖τ_1‖…‖τ_t‖)`` with one norm over every layer, and
``M_t = S_t / λ_t``: the merge keeps the mean norm of the task vectors, and λ_t grows
about like √t for near-orthogonal task vectors. The merged delta is ``scale · M_T``.

Where eigenmix differs, and why: the reference zeroes ``P``'s diagonal over a full SVD
basis; beyond ``M``'s numerical rank that basis is arbitrary (any orthonormal complement),
so eigenmix zeroes it over ``M``'s rank only, the same numbers wherever ``M`` has full rank
(the reference's fine-tunes) and a basis-independent rule for low-rank merges (LoRA). The
reference projects the weights of ``nn.Linear`` modules only; a checkpoint does not say
which matrices are linears, so eigenmix projects every matrix layer (embeddings of full
fine-tunes included) and sums every vector.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from eigenmix.merging.continual import Continual, Layer, add_factors, as_layer, norm_sq, scaled
from eigenmix.merging.registry import MergeParams, register
from eigenmix.modules import AnyDelta, factor_pair
from eigenmix.spectral import SVD


class OpcmParams(MergeParams):
    alpha: float = Field(0.5, gt=0, lt=1, description="share of the merge's singular-value mass whose block is projected out")


def split_rank(S: torch.Tensor, alpha: float) -> int:
    """The reference's ``(s.cumsum(0) / s.sum() > alpha).float().argmax()``."""
    if S.numel() == 0 or float(S.sum()) == 0.0:
        return 0
    return int((S.cumsum(0) / S.sum() > alpha).float().argmax())


def step(state: Layer | None, delta: AnyDelta, weight: float, p: OpcmParams, info: dict[str, Any]) -> Layer:
    """``λ_{t−1} M_{t−1} + τ̃_t`` for one layer (``τ_t`` itself where the layer is new)."""
    if state is None:
        return as_layer(delta, weight)
    lam = float(info.get("lambda", 1.0))
    if isinstance(state, torch.Tensor):
        return lam * state + weight * delta.dense().to(torch.float64)
    L, R = factor_pair(delta)
    L, R = weight * L.to(torch.float64), R.to(torch.float64)
    U, S, V = state
    P = (U.T @ L) @ (V.T @ R).T  # (ρ, ρ): Uᵀ τ V over the merge's rank
    r = split_rank(S, p.alpha)
    Z = torch.diag(torch.diagonal(P))
    Z[:r, :r] = P[:r, :r]
    core = lam * torch.diag(S) - Z  # λ M − U Z Vᵀ = U (λ Σ − Z) Vᵀ
    return add_factors(SVD(U, torch.ones_like(S), V @ core.T), L, R) if S.numel() else as_layer(delta, weight)


def rescale(layers: dict[str, Layer], info: dict[str, Any], p: OpcmParams) -> tuple[dict[str, Layer], dict[str, Any]]:
    """After module t: ``λ_t = ‖S_t‖ / mean norm``, ``M_t = S_t / λ_t`` (nothing at t = 1)."""
    norms = [*info.get("norms", []), float(info.pop("module_norm"))]
    info = {**info, "norms": norms}
    if len(norms) == 1:
        return layers, {**info, "lambda": 1.0}
    lam = sum(norm_sq(s) for s in layers.values()) ** 0.5 / (sum(norms) / len(norms))
    return {k: scaled(s, 1.0 / lam) for k, s in layers.items()}, {**info, "lambda": lam}


def output(state: Layer, p: OpcmParams, info: dict[str, Any], weights: Any) -> Layer:
    return scaled(state, p.scale)


register(
    "opcm",
    params=OpcmParams,
    kind="spectral",
    description="continual: each new task vector projected off the merge's leading singular block, norm kept at the mean",
    paper="Tang et al., Merging Models on the Fly Without Retraining: A Sequential Approach to Scalable Continual Model Merging, "
    "NeurIPS 2025",
    url="https://arxiv.org/abs/2501.09522",
    continual=Continual(step=step, output=output, rescale=rescale, sequential=True),
)(step)  # sequential: its per-layer function is the fold step (eigenmix.merging.continual)
