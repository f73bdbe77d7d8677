"""Where a tuning run starts: a registered merge method expressed as a composition's
coefficients, layer by layer — one registry, as the merge methods and the routers have.

A start is named after the merge it reproduces (:mod:`eigenmix.merging.registry`), and
whether it needs calibration statistics is that method's ``calibration``, not a second list:

- ``spectral``: eigenmix's overlap rule (:func:`spectral_coefficients`), data-free;
- ``task_arithmetic``: every λ = 1, data-free;
- ``spectral_ls``: its λ on the modules' own directions, from the rows' Grams;
- ``spectral_align``: its aligned directions, each owned by the module whose task's inputs
  use it most, with λ = μ.

The calibrated starts use their method's default parameters; weights are folded into λ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from eigenmix.compose import LayerFactors, Level, layer_factors
from eigenmix.errors import InvalidInputError, did_you_mean
from eigenmix.merging import get_method
from eigenmix.merging.methods.spectral import spectral_coefficients
from eigenmix.merging.methods.spectral_align import SpectralAlignParams, aligned_spectrum
from eigenmix.merging.methods.spectral_ls import SpectralLsParams, ls_coefficients
from eigenmix.merging.statistics import Kind as CalibrationKind
from eigenmix.merging.statistics import LayerGrams
from eigenmix.spectral import LayerSpectra

Init = Literal["spectral", "task_arithmetic", "spectral_ls", "spectral_align"]  # the registered names (a test keeps them equal)


@dataclass(frozen=True)
class LayerStart:
    """What a start gets for one layer beside its joint decomposition.

    Attributes:
        owners: the indices (among the tuned modules) of the modules that have the layer.
        weights: their weights, in the order of ``owners``.
        scale: multiplies every starting λ (the merge's α).
        flatten: the spectral rule's β.
        level: ``"lambda"`` or ``"lambda+mu"``.
        grams: the layer's calibration statistics (calibrated starts; None otherwise).
    """

    owners: list[int]
    weights: list[float]
    scale: float
    flatten: float
    level: Level
    grams: LayerGrams | None = None


LayerFn = Callable[[LayerSpectra, LayerStart], LayerFactors]


@dataclass(frozen=True)
class Start:
    """A registered start: ``factors(layer, start) → LayerFactors`` reproduces the merge ``name``."""

    name: str
    factors: LayerFn

    @property
    def calibration(self) -> CalibrationKind | None:
        """The statistics it needs: its merge method's (None: data-free)."""
        return get_method(self.name).calibration


_STARTS: dict[str, Start] = {}


def register_start(name: str) -> Callable[[LayerFn], LayerFn]:
    """Register a per-layer start under the name of the merge method it reproduces."""

    def decorate(fn: LayerFn) -> LayerFn:
        if name in _STARTS:
            raise ValueError(f"tuning start '{name}' is already registered")
        get_method(name)  # a start is a registered merge
        _STARTS[name] = Start(name, fn)
        return fn

    return decorate


def all_starts() -> list[Start]:
    """Every registered start, in the order of registration (data-free first)."""
    return list(_STARTS.values())


def get_start(name: str) -> Start:
    """The start registered as ``name``; one :class:`InvalidInputError` line otherwise."""
    if name not in _STARTS:
        *first, last = _STARTS
        raise InvalidInputError(f"unknown init '{name}'{did_you_mean(name, _STARTS)} ({', '.join(first)} or {last})")
    return _STARTS[name]


def _data_free(layer: LayerSpectra, lambdas: Sequence[Tensor], mu: Tensor | None, s: LayerStart) -> LayerFactors:
    """λ times the scale and weights; μ where the level has it (1 where the rule sets none)."""
    lambdas = [s.scale * w * lam for w, lam in zip(s.weights, lambdas, strict=True)]
    if s.level == "lambda+mu" and mu is None:
        mu = torch.ones(min(layer.rank), dtype=torch.float64)
    return layer_factors(layer, lambdas, mu if s.level == "lambda+mu" else None, s.owners)


@register_start("spectral")
def spectral_start(layer: LayerSpectra, s: LayerStart) -> LayerFactors:
    lambdas, mu = spectral_coefficients(layer, s.flatten)
    return _data_free(layer, lambdas, mu, s)


@register_start("task_arithmetic")
def task_arithmetic_start(layer: LayerSpectra, s: LayerStart) -> LayerFactors:
    return _data_free(layer, [torch.ones_like(sigma) for sigma in layer.sigma], None, s)


@register_start("spectral_ls")
def spectral_ls_start(layer: LayerSpectra, s: LayerStart) -> LayerFactors:
    assert s.grams is not None  # build() checks that a calibrated start has its statistics
    lambdas = ls_coefficients(layer, s.grams, SpectralLsParams().ridge)
    return layer_factors(layer, [s.scale * float(layer.weights[k]) * lam for k, lam in enumerate(lambdas)], None, s.owners)


@register_start("spectral_align")
def spectral_align_start(layer: LayerSpectra, s: LayerStart) -> LayerFactors:
    assert s.grams is not None  # build() checks that a calibrated start has its statistics
    p = SpectralAlignParams()
    a = aligned_spectrum(layer, s.grams, p.alpha, p.flatten)
    dtype = layer.row_basis.dtype
    member = a.shares[: layer.k].argmax(0)  # the module whose task's inputs use each direction most
    owner = torch.as_tensor(s.owners, dtype=torch.long)[member]
    return LayerFactors(layer.lift_columns(a.U), s.grams.from_rows(a.W).to(dtype), a.nu, owner, s.scale * a.mu)
