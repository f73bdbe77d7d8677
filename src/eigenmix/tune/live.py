"""The start of a tuning run: a :class:`~eigenmix.compose.Composition` whose coefficients
reproduce a merge, data-free (``spectral``, ``task_arithmetic``) or calibrated
(``spectral_ls``, ``spectral_align``): each start is registered in
:mod:`eigenmix.tune.starts`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from eigenmix.compose import Composition, Granularity, LayerFactors, Level
from eigenmix.errors import InvalidInputError
from eigenmix.merging.statistics import GramSource
from eigenmix.modules import Module, SpectralDelta, layer_spectra
from eigenmix.tune.starts import Init, LayerStart, get_start


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
    """A :class:`Composition` of ``modules`` on ``model``, starting from a merge.

    Args:
        init: a registered start (:mod:`eigenmix.tune.starts`): ``"spectral"`` (eigenmix's
            overlap rule) or ``"task_arithmetic"`` (every λ = 1), data-free: the merges
            expressible as λ on the modules' own directions; or ``"spectral_ls"``,
            ``"spectral_align"``, calibrated.
        scale: multiplies every starting λ (the merge's α).
        weights: per-module weights (default 1), folded into λ.
        flatten: the spectral rule's β; > 0 needs ``level="lambda+mu"`` (it sets μ).
        calibration: the statistics of a calibrated start (``spectral_ls``, ``spectral_align``
            with their default parameters; level ``lambda``); a data-free start refuses them.

    With λ and μ at their starting values the model computes ``W0 + ΔW`` of
    ``eigenmix.merge(modules, init, scale=scale, flatten=flatten)`` (calibrated starts: of
    ``eigenmix.merge(modules, init, scale=scale, calibration=calibration)``).
    """
    if not modules:
        raise InvalidInputError("tuning needs at least one module")
    start = get_start(init)
    if start.calibration is not None and (calibration is None or level != "lambda"):
        raise InvalidInputError(f"init '{init}' needs calibration statistics and level 'lambda'")
    if start.calibration is None and calibration is not None:
        raise InvalidInputError(f"init '{init}' is data-free: it takes no calibration statistics")
    if flatten > 0 and level != "lambda+mu":
        raise InvalidInputError("flatten > 0 sets μ: use level 'lambda+mu'")
    w = list(weights) if weights is not None else [1.0] * len(modules)
    if len(w) != len(modules):
        raise InvalidInputError(f"{len(w)} weights for {len(modules)} modules")
    factors: dict[str, LayerFactors] = {}
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
        grams = calibration.layer(name, owners) if calibration is not None else None
        factors[name] = start.factors(layer, LayerStart(owners, [w[k] for k in owners], scale, flatten, level, grams))
        if calibration is not None and calibration.kind == "merged":  # a source that follows the merge sees this layer at scale 1
            calibration.merged(name, _at_scale_one(factors[name], scale))
    factors = {name: replace(f, kernel=kernels[name]) if kernels.get(name) else f for name, f in factors.items()}  # conv layers, for export
    return Composition(model, factors, [m.name for m in modules], granularity, level)


def _at_scale_one(f: LayerFactors, scale: float) -> SpectralDelta:
    """The start's delta ``left diag(λ0 σ / scale) rightᵀ`` as an SVD (small QR cores, no ``m × n``)."""
    Qu, Ru = torch.linalg.qr(f.left.to(torch.float64))
    Qv, Rv = torch.linalg.qr(f.right.to(torch.float64))
    Uc, S, Vch = torch.linalg.svd((Ru * (f.lam0 / scale * f.sigma)) @ Rv.T, full_matrices=False)
    return SpectralDelta(Qu @ Uc, S, Qv @ Vch.T)
