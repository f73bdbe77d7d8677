"""The start of a tuning run: a :class:`~eigenmix.compose.Composition` whose coefficients
reproduce a merge: data-free (``spectral``, ``task_arithmetic``) or calibrated
(``spectral_ls``: its λ on the modules' own directions; ``spectral_align``: its aligned
directions, each owned by the module whose task's inputs use it most, with λ = μ)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import torch
from torch import nn

from eigenmix.compose import Composition, Granularity, LayerFactors, Level, layer_factors
from eigenmix.errors import InvalidInputError
from eigenmix.merging.calibration import GramSource, LayerGrams
from eigenmix.merging.methods.spectral import spectral_coefficients
from eigenmix.merging.methods.spectral_align import SpectralAlignParams, aligned_spectrum
from eigenmix.merging.methods.spectral_ls import SpectralLsParams, ls_coefficients
from eigenmix.modules import Module, SpectralDelta, layer_spectra
from eigenmix.spectral import LayerSpectra

Init = Literal["spectral", "task_arithmetic", "spectral_ls", "spectral_align"]
CALIBRATED = ("spectral_ls", "spectral_align")


def build(
    model: nn.Module,
    modules: Sequence[Module],
    *,
    init: Init = "spectral",
    scale: float = 1.0,
    weights: Sequence[float] | None = None,
    flatten: float = 0.0,
    granularity: Granularity = "direction",
    level: Level = "lambda",
    calibration: GramSource | None = None,
) -> Composition:
    """A :class:`Composition` of ``modules`` on ``model``, starting from a data-free merge.

    Args:
        init: ``"spectral"`` (eigenmix's overlap rule, :func:`spectral_coefficients`) or
            ``"task_arithmetic"`` (every λ = 1): the merges expressible as λ on the
            modules' own directions.
        scale: multiplies every starting λ (the merge's α).
        weights: per-module weights (default 1), folded into λ.
        flatten: the spectral rule's β; > 0 needs ``level="lambda+mu"`` (it sets μ).
        calibration: the statistics of a calibrated start (``spectral_ls``, ``spectral_align``
            with their default parameters; level ``lambda``).

    With λ and μ at their starting values the model computes ``W0 + ΔW`` of
    ``eigenmix.merge(modules, init, scale=scale, flatten=flatten)`` (calibrated starts: of
    ``eigenmix.merge(modules, init, scale=scale, calibration=calibration)``).
    """
    if not modules:
        raise InvalidInputError("tuning needs at least one module")
    if init not in ("spectral", "task_arithmetic", *CALIBRATED):
        raise InvalidInputError(f"unknown init '{init}' (spectral, task_arithmetic, spectral_ls or spectral_align)")
    if init in CALIBRATED and (calibration is None or level != "lambda"):
        raise InvalidInputError(f"init '{init}' needs calibration statistics and level 'lambda'")
    if flatten > 0 and level != "lambda+mu":
        raise InvalidInputError("flatten > 0 sets μ: use level 'lambda+mu'")
    w = list(weights) if weights is not None else [1.0] * len(modules)
    if len(w) != len(modules):
        raise InvalidInputError(f"{len(w)} weights for {len(modules)} modules")
    factors = {}
    kernels: dict[str, tuple[int, ...] | None] = {}
    names = sorted({n for m in modules for n in m.layers})
    if calibration is not None:
        calibration.reset()
    for name in calibration.order(names) if calibration is not None else names:
        owners = [k for k, m in enumerate(modules) if name in m.layers]
        deltas = [modules[k].layers[name] for k in owners]
        kernels[name] = getattr(deltas[0], "kernel", None)
        if len(deltas[0].shape) != 2:
            raise InvalidInputError(f"layer '{name}' is not a matrix; tuning composes matrix and conv layers only")
        layer = layer_spectra(deltas, [w[k] for k in owners])
        if calibration is not None:
            factors[name] = _calibrated(layer, calibration.layer(name, owners), init, scale, owners)
            if calibration.kind == "merged":  # a source that follows the merge sees this layer at scale 1
                calibration.merged(name, _at_scale_one(factors[name], scale))
            continue
        if init == "spectral":
            lambdas, mu = spectral_coefficients(layer, flatten)
        else:
            lambdas, mu = [torch.ones_like(s) for s in layer.sigma], None
        lambdas = [scale * w[k] * lam for k, lam in zip(owners, lambdas, strict=True)]
        if level == "lambda+mu" and mu is None:
            mu = torch.ones(min(layer.rank), dtype=torch.float64)
        factors[name] = layer_factors(layer, lambdas, mu if level == "lambda+mu" else None, owners)
    factors = {name: replace(f, kernel=kernels[name]) if kernels.get(name) else f for name, f in factors.items()}  # conv layers, for export
    return Composition(model, factors, [m.name for m in modules], granularity, level)


def _calibrated(layer: LayerSpectra, grams: LayerGrams, init: str, scale: float, owners: list[int]) -> LayerFactors:
    """The factors of a calibrated start (the methods' default parameters; weights folded in)."""
    if init == "spectral_ls":
        lambdas = ls_coefficients(layer, grams, SpectralLsParams().ridge)
        return layer_factors(layer, [scale * float(layer.weights[k]) * lam for k, lam in enumerate(lambdas)], None, owners)
    p = SpectralAlignParams()
    a = aligned_spectrum(layer, grams, p.alpha, p.flatten)
    dtype = layer.row_basis.dtype
    member = a.shares[: layer.k].argmax(0)  # the module whose task's inputs use each direction most
    owner = torch.as_tensor(owners, dtype=torch.long)[member]
    return LayerFactors(layer.lift_columns(a.U), grams.from_rows(a.W).to(dtype), a.nu, owner, scale * a.mu)


def _at_scale_one(f: LayerFactors, scale: float) -> SpectralDelta:
    """The start's delta ``left diag(λ0 σ / scale) rightᵀ`` as an SVD (small QR cores, no ``m × n``)."""
    Qu, Ru = torch.linalg.qr(f.left.to(torch.float64))
    Qv, Rv = torch.linalg.qr(f.right.to(torch.float64))
    Uc, S, Vch = torch.linalg.svd((Ru * (f.lam0 / scale * f.sigma)) @ Rv.T, full_matrices=False)
    return SpectralDelta(Qu @ Uc, S, Qv @ Vch.T)
