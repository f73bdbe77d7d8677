"""Deltas as factor pairs ``ΔW = L Rᵀ``, and one layer's deltas in their joint basis.

The bridge between the delta forms of :mod:`eigenmix.modules.delta` and the pure engine of
:mod:`eigenmix.spectral.joint`: LoRA deltas give their factors (scale folded in), spectral
ones ``(U σ, V)``, dense ones a truncated SVD (exact, or randomized to ``dense_rank``; cut
to ``dense_energy`` of their spectral energy and to their numerical rank).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from eigenmix.modules.delta import AnyDelta, LowRankDelta, SpectralDelta, delta_dtype
from eigenmix.modules.module import Module
from eigenmix.spectral import LayerSpectra, decompose, default_rtol, numerical_rank, rank_for_energy, svd


def factor_pair(delta: AnyDelta, *, dense_rank: int | None = None, dense_energy: float = 1.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(L (m, r), R (n, r))`` with ``delta = L Rᵀ``, in the delta's dtype."""
    if isinstance(delta, LowRankDelta):
        return delta.B * delta.scale, delta.A.T
    if isinstance(delta, SpectralDelta):
        return delta.U * delta.S, delta.V
    randomized = dense_rank is not None and 10 * dense_rank < min(delta.shape)
    # the exact SVD in float64; a randomized one (an approximation at rank k) in float32 or the inputs' wider dtype
    W = delta.W.to(torch.promote_types(delta.dtype, torch.float32) if randomized else torch.float64)
    f = svd(W, dense_rank, randomized=randomized, seed=seed)
    if dense_energy < 1.0:
        f = f.truncate(rank_for_energy(f.S, dense_energy))
    f = f.truncate(numerical_rank(f.S, default_rtol(delta.dtype)))  # zero directions are undefined
    return (f.U * f.S).to(delta.dtype), f.V.to(delta.dtype)


def work_dtype(deltas: Sequence[AnyDelta]) -> torch.dtype:
    """float32, or float64 if any delta is float64: the dtype of the m-sized products and results."""
    return promoted_dtype(delta_dtype(d) for d in deltas)


def promoted_dtype(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """float32, or float64 if any of ``dtypes`` is float64 (half precision computes in float32)."""
    dtype = torch.float32
    for d in dtypes:
        dtype = torch.promote_types(dtype, d)
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def modules_work_dtype(modules: Iterable[Module]) -> torch.dtype:
    """:func:`work_dtype` over every layer of ``modules``, from headers where the layers are
    read lazily (no layer is read)."""
    return promoted_dtype(d for m in modules for d in m.dtypes())


def layer_spectra(
    deltas: Sequence[AnyDelta],
    weights: Sequence[float],
    *,
    dense_rank: int | None = None,
    dense_energy: float = 1.0,
    seed: int = 0,
) -> LayerSpectra:
    """K deltas of one layer in their joint basis (:func:`eigenmix.spectral.decompose`), with
    the rank tolerance of their work dtype."""
    dtype = work_dtype(deltas)
    factors = [factor_pair(d, dense_rank=dense_rank, dense_energy=dense_energy, seed=seed) for d in deltas]
    return decompose([(L.to(dtype), R.to(dtype)) for L, R in factors], weights, default_rtol(dtype))
