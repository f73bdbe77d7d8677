"""Rank selection by retained spectral energy.

The energy of a spectrum ``σ`` is ``Σ σᵢ²`` (the squared Frobenius norm of the matrix);
keeping the ``k`` leading directions retains ``Σ_{i<k} σᵢ² / Σ σᵢ²`` of it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def energy_profile(S: Tensor) -> Tensor:
    """Cumulative retained energy: entry ``k-1`` is the share kept by the top ``k``.

    Args:
        S: ``(r,)`` singular values, non-increasing.

    Returns:
        ``(r,)`` float64, non-decreasing, last entry 1 (all ones for a zero spectrum).
    """
    e = S.to(torch.float64).square()
    total = e.sum()
    if total == 0:
        return torch.ones_like(e)
    return (torch.cumsum(e, 0) / total).clamp(max=1.0)


def retained_energy(S: Tensor, k: int) -> float:
    """Share of the energy of spectrum ``S`` (``(r,)``) kept by its top ``k`` directions."""
    if k <= 0:
        return 0.0 if S.numel() and bool(S.abs().sum() > 0) else 1.0
    if k >= S.numel():
        return 1.0
    return float(energy_profile(S)[k - 1])


def rank_for_energy(S: Tensor, energy: float) -> int:
    """Smallest ``k`` whose top-``k`` directions keep at least ``energy`` of the spectrum.

    Args:
        S: ``(r,)`` singular values, non-increasing.
        energy: target share in ``(0, 1]``.

    Returns:
        ``k`` in ``[0, r]``; 0 only for an empty or all-zero spectrum.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1]; got {energy}")
    if S.numel() == 0 or bool(S.abs().sum() == 0):
        return 0
    profile = energy_profile(S)
    # a tiny slack so that energy=1.0 is met despite float rounding of the cumulative sum
    k = int(torch.searchsorted(profile, torch.tensor(energy - 1e-12, dtype=profile.dtype)))
    return min(k + 1, S.numel())
