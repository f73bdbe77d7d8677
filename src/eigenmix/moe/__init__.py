"""Spectral Mixture of Experts: a drop-in ``nn.Linear`` (and ``nn.Conv2d``: a spectral CNN
layer) whose experts share the singular vectors and rescale the spectrum, mixed per input
(per output position for a conv) by a gate and a router."""

from eigenmix.moe.conv import SpectralMoEConv2d, conv_fast_forward
from eigenmix.moe.convert import ConvertReport, convert, last_routing, matches, param_groups
from eigenmix.moe.functional import MoEOutput, MoEParams, fast_forward, naive_forward
from eigenmix.moe.layer import SpectralMoELinear

__all__ = [
    "ConvertReport",
    "MoEOutput",
    "MoEParams",
    "SpectralMoEConv2d",
    "SpectralMoELinear",
    "conv_fast_forward",
    "convert",
    "fast_forward",
    "last_routing",
    "matches",
    "naive_forward",
    "param_groups",
]
