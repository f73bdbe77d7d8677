"""Exact per-module magnitude thresholds over a whole model, in a few streaming passes.

``trim: global`` keeps, for each module, the ``k`` entries of largest magnitude among *all*
its entries of every layer (the original TIES code trims the flattened task vector; the
KnOTS code its flattened coefficients). Holding every magnitude of a module at once would
cost the whole model's size; instead the k-th largest is found by radix selection on the
bits of the float64 magnitudes (for non-negative floats their order is that of their bit
patterns): each pass streams the layers again and histograms the next 16 bits of the values
still in the running, until at most ``limit`` candidates are left, which one more pass
gathers and sorts. Memory: a 65,536-bin histogram per module and ``limit`` values; passes:
usually three (two histograms and a gather), at most five.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

_BITS = 16
_BINS = 1 << _BITS


def kth_largest(
    values: Callable[[], Iterable[tuple[int, Tensor]]], groups: int, rank: Callable[[int], int], limit: int = 1 << 20
) -> list[float]:
    """For each group ``g``, the ``rank(N_g)``-th largest magnitude among its ``N_g`` values.

    Args:
        values: called once per pass; yields ``(group, tensor)`` pieces, the same each time.
        groups: the number of groups (groups without values get ``inf``).
        rank: the 1-based rank wanted, from the group's number of values (clamped to [1, N]).
        limit: candidates gathered and sorted at once.
    """
    prefix, fixed, k, size = [0] * groups, [0] * groups, [0] * groups, [-1] * groups
    result: list[float | None] = [None] * groups
    while any(r is None for r in result):
        gather = [result[g] is None and 0 <= size[g] <= limit for g in range(groups)]
        hist = {g: torch.zeros(_BINS, dtype=torch.int64) for g in range(groups) if result[g] is None and not gather[g]}
        picked: dict[int, list[Tensor]] = {g: [] for g in range(groups) if gather[g]}
        for g, tensor in values():
            if result[g] is not None:
                continue
            bits = tensor.detach().to(torch.float64).abs().reshape(-1).view(torch.int64)
            if fixed[g]:
                bits = bits[(bits >> (64 - fixed[g])) == prefix[g]]
            if gather[g]:
                picked[g].append(bits)
            else:
                hist[g] += torch.bincount((bits >> (64 - fixed[g] - _BITS)) & (_BINS - 1), minlength=_BINS)
        for g, chunks in picked.items():
            ordered = torch.cat(chunks).view(torch.float64).sort(descending=True).values
            result[g] = float(ordered[k[g] - 1])
        for g, h in hist.items():
            if size[g] < 0:  # first pass: the group's size decides the rank
                size[g] = int(h.sum())
                if size[g] == 0:
                    result[g] = float("inf")
                    continue
                k[g] = min(max(rank(size[g]), 1), size[g])
            from_top = h.flip(0).cumsum(0)  # values in bins ≥ each bin, highest bin first
            b = int(torch.searchsorted(from_top, torch.tensor(k[g])))  # index from the top
            above = int(from_top[b - 1]) if b > 0 else 0
            bin_ = _BINS - 1 - b
            prefix[g], fixed[g], k[g], size[g] = (prefix[g] << _BITS) | bin_, fixed[g] + _BITS, k[g] - above, int(h[bin_])
            if fixed[g] == 64:  # every candidate has the same bits: that is the value
                result[g] = float(torch.tensor([prefix[g]], dtype=torch.int64).view(torch.float64))
    return [float(r) for r in result]  # type: ignore[arg-type]


def global_thresholds(values: Callable[[], Iterable[tuple[int, Tensor]]], modules: int, plan: Any) -> Tensor:
    """``(K,)`` float64: module k keeps the entries whose magnitude is at least its
    threshold, the ``keep_count(N_k)``-th largest of its ``N_k`` entries."""
    count = plan.method.keep_count
    return torch.tensor(kth_largest(values, modules, lambda n: count(n, plan.params)), dtype=torch.float64)
