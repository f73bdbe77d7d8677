"""Spectral Mixture of Experts: a drop-in ``nn.Linear`` whose experts share the singular
vectors and rescale the spectrum, mixed per input by a gate and a router."""

from eigenmix.moe.convert import ConvertReport, convert, last_routing, matches
from eigenmix.moe.functional import MoEOutput, MoEParams, fast_forward, naive_forward
from eigenmix.moe.layer import SpectralMoELinear

__all__ = [
    "ConvertReport",
    "MoEOutput",
    "MoEParams",
    "SpectralMoELinear",
    "convert",
    "fast_forward",
    "last_routing",
    "matches",
    "naive_forward",
]
