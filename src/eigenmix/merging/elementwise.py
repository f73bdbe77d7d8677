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
    """DARE's random keep-mask: each entry kept with probability ``density`` (bool: a byte per entry)."""
    return torch.bernoulli(torch.full(shape, float(density)), generator=generator).bool()


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
    summed weights of those entries (the "disjoint mean"). One module at a time: no
    ``(K, *shape)`` temporaries beyond the input."""
    merged = torch.zeros_like(sign)
    divisor = torch.zeros_like(sign) if normalize else None
    for k in range(weighted.shape[0]):
        agree = weighted[k].sign() == sign  # zeros never agree
        merged.add_(torch.where(agree, weighted[k], 0.0))
        if divisor is not None:
            divisor.add_(agree.to(sign.dtype), alpha=float(weights[k]))
    if divisor is None:
        return merged
    return merged.div_(torch.where(divisor == 0, 1.0, divisor))


def weighted(deltas: Tensor, weights: Tensor) -> Tensor:
    """``w_k · Δ_k`` for stacked deltas ``(K, *shape)``."""
    return deltas * weights.reshape(-1, *([1] * (deltas.ndim - 1))).to(deltas.dtype)


def _weigh_(deltas: Tensor, weights: Tensor) -> Tensor:
    """:func:`weighted` in place, for a stack this module made itself."""
    return deltas.mul_(weights.reshape(-1, *([1] * (deltas.ndim - 1))).to(deltas.dtype))


def trim(deltas: Tensor, density: float, thresholds: Tensor | None = None) -> Tensor:
    """Each delta ``(K, *shape)`` trimmed: to its own top ``density`` entries (per tensor), or,
    given per-module ``thresholds`` ``(K,)`` from a whole-model pass, to the entries whose
    magnitude reaches its module's threshold. A new tensor, filled one module at a time."""
    out = torch.empty_like(deltas)
    for k, d in enumerate(deltas):
        keep = magnitude_mask(d, density) if thresholds is None else d.abs() >= thresholds[k].to(d.dtype)
        torch.mul(d, keep, out=out[k])
    return out


def ties_merge(deltas: Tensor, weights: Tensor, *, density: float, normalize: bool = True, thresholds: Tensor | None = None) -> Tensor:
    """TIES: trim each delta (:func:`trim`), elect the sign, disjoint merge."""
    w_deltas = _weigh_(trim(deltas, density, thresholds), weights)
    return disjoint_merge(w_deltas, weights, elect_sign(w_deltas), normalize=normalize)


def dare_ties_merge(deltas: Tensor, weights: Tensor, masks: Tensor, *, density: float, rescale: Rescale, normalize: bool) -> Tensor:
    """DARE-TIES with given keep-masks ``(K, *shape)``: drop and rescale, then sign election."""
    w_deltas = _weigh_(_dropped(deltas, masks, density, rescale), weights)
    return disjoint_merge(w_deltas, weights, elect_sign(w_deltas), normalize=normalize)


def dare_linear_merge(deltas: Tensor, weights: Tensor, masks: Tensor, *, density: float, rescale: Rescale) -> Tensor:
    """DARE with given keep-masks: drop and rescale each delta, then the weighted sum."""
    return _weigh_(_dropped(deltas, masks, density, rescale), weights).sum(0)


def _dropped(deltas: Tensor, masks: Tensor, density: float, rescale: Rescale) -> Tensor:
    out = torch.empty_like(deltas)
    for k, (d, m) in enumerate(zip(deltas, masks, strict=True)):
        out[k] = drop_and_rescale(d, m, density, rescale)
    return out
