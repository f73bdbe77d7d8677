"""Pure element-wise merge operations on stacked dense deltas: trim, drop, elect sign,
disjoint merge. They depend on the coordinate basis, so they act on dense deltas.

Shapes: ``deltas`` is ``(K, *shape)`` (one row per module), ``weights`` is ``(K,)``.
Semantics follow mergekit's ``generalized_task_arithmetic`` (weights applied before the
sign election; the disjoint mean divides by the summed weights of the agreeing entries);
with unit weights this is also PEFT's ``merge_utils``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Rescale = Literal["inverse_density", "l1", "none"]


def magnitude_mask(delta: Tensor, density: float) -> Tensor:
    """Keep the ``max(1, ⌊density · numel⌋)`` entries of largest magnitude (TIES "trim")."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=torch.bool)
    magnitudes = delta.abs().reshape(-1).to(torch.promote_types(delta.dtype, torch.float32))
    mask[torch.topk(magnitudes, k, sorted=False).indices] = True
    return mask.reshape(delta.shape)


def bernoulli_mask(shape: torch.Size, density: float, generator: torch.Generator) -> Tensor:
    """DARE's random keep-mask: each entry kept with probability ``density``."""
    return torch.bernoulli(torch.full(shape, float(density)), generator=generator)


def drop_and_rescale(delta: Tensor, mask: Tensor, density: float, rescale: Rescale) -> Tensor:
    """Apply a keep-mask and rescale: ``1 / density`` (DARE paper, PEFT) or to the
    original L1 norm (mergekit), or not at all."""
    kept = delta * mask
    if rescale == "inverse_density":
        return kept / density if density > 0 else kept
    if rescale == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
        return kept if before < 1e-7 or after < 1e-7 else kept * (before / after)
    return kept


def elect_sign(weighted: Tensor, method: Literal["sum", "count"] = "sum") -> Tensor:
    """Majority sign per entry: of the summed values (TIES) or of the sign count; ties → +1."""
    total = weighted.sum(0) if method == "sum" else weighted.sign().sum(0)
    return torch.where(total >= 0, 1.0, -1.0).to(weighted.dtype)


def disjoint_merge(weighted: Tensor, weights: Tensor, sign: Tensor, *, normalize: bool) -> Tensor:
    """Sum the entries that agree with the elected sign; with ``normalize``, divide by the
    summed weights of those entries (the "disjoint mean")."""
    agree = (weighted.sign() == sign).to(weighted.dtype)  # (K, *shape); zeros never agree
    merged = (weighted * agree).sum(0)
    if not normalize:
        return merged
    w = weights.reshape(-1, *([1] * (weighted.ndim - 1))).to(weighted.dtype)
    divisor = (w * agree).sum(0)
    return merged / torch.where(divisor == 0, torch.ones_like(divisor), divisor)


def weighted(deltas: Tensor, weights: Tensor) -> Tensor:
    """``w_k · Δ_k`` for stacked deltas ``(K, *shape)``."""
    return deltas * weights.reshape(-1, *([1] * (deltas.ndim - 1))).to(deltas.dtype)


def trim(deltas: Tensor, density: float, thresholds: Tensor | None = None) -> Tensor:
    """Each delta ``(K, *shape)`` trimmed: to its own top ``density`` entries (per tensor), or,
    given per-module ``thresholds`` ``(K,)`` from a whole-model pass, to the entries whose
    magnitude reaches its module's threshold."""
    if thresholds is None:
        return torch.stack([d * magnitude_mask(d, density) for d in deltas])
    keep = deltas.abs() >= thresholds.to(deltas.dtype).reshape(-1, *([1] * (deltas.ndim - 1)))
    return deltas * keep


def ties_merge(deltas: Tensor, weights: Tensor, *, density: float, normalize: bool = True, thresholds: Tensor | None = None) -> Tensor:
    """TIES: trim each delta (:func:`trim`), elect the sign, disjoint merge."""
    w_deltas = weighted(trim(deltas, density, thresholds), weights)
    return disjoint_merge(w_deltas, weights, elect_sign(w_deltas), normalize=normalize)


def dare_ties_merge(deltas: Tensor, weights: Tensor, masks: Tensor, *, density: float, rescale: Rescale, normalize: bool) -> Tensor:
    """DARE-TIES with given keep-masks ``(K, *shape)``: drop and rescale, then sign election."""
    dropped = torch.stack([drop_and_rescale(d, m, density, rescale) for d, m in zip(deltas, masks, strict=True)])
    w_deltas = weighted(dropped, weights)
    return disjoint_merge(w_deltas, weights, elect_sign(w_deltas), normalize=normalize)


def dare_linear_merge(deltas: Tensor, weights: Tensor, masks: Tensor, *, density: float, rescale: Rescale) -> Tensor:
    """DARE with given keep-masks: drop and rescale each delta, then the weighted sum."""
    dropped = torch.stack([drop_and_rescale(d, m, density, rescale) for d, m in zip(deltas, masks, strict=True)])
    return weighted(dropped, weights).sum(0)
