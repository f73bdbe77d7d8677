"""Module types: one layer's delta in low-rank, spectral or dense form, and a module."""

from eigenmix.modules.delta import AnyDelta, Delta, DenseDelta, LowRankDelta, SpectralDelta, delta_dtype
from eigenmix.modules.module import Module

__all__ = ["AnyDelta", "Delta", "DenseDelta", "LowRankDelta", "Module", "SpectralDelta", "delta_dtype"]
