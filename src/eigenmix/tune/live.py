"""The data-free start of a tuning run: a :class:`~eigenmix.compose.Composition` whose
coefficients reproduce a merge (``spectral`` or ``task_arithmetic``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from eigenmix.compose import Composition, Granularity, Level, layer_factors
from eigenmix.errors import InvalidInputError
from eigenmix.merging.methods.spectral import spectral_coefficients
from eigenmix.modules import Module, layer_spectra

Init = Literal["spectral", "task_arithmetic"]


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
) -> Composition:
    """A :class:`Composition` of ``modules`` on ``model``, starting from a data-free merge.

    Args:
        init: ``"spectral"`` (eigenmix's overlap rule, :func:`spectral_coefficients`) or
            ``"task_arithmetic"`` (every λ = 1): the merges expressible as λ on the
            modules' own directions.
        scale: multiplies every starting λ (the merge's α).
        weights: per-module weights (default 1), folded into λ.
        flatten: the spectral rule's β; > 0 needs ``level="lambda+mu"`` (it sets μ).

    With λ and μ at their starting values the model computes ``W0 + ΔW`` of
    ``eigenmix.merge(modules, init, scale=scale, flatten=flatten)``.
    """
    if not modules:
        raise InvalidInputError("tuning needs at least one module")
    if init not in ("spectral", "task_arithmetic"):
        raise InvalidInputError(f"unknown init '{init}' (spectral or task_arithmetic)")
    if flatten > 0 and level != "lambda+mu":
        raise InvalidInputError("flatten > 0 sets μ: use level 'lambda+mu'")
    w = list(weights) if weights is not None else [1.0] * len(modules)
    if len(w) != len(modules):
        raise InvalidInputError(f"{len(w)} weights for {len(modules)} modules")
    factors = {}
    for name in sorted({n for m in modules for n in m.layers}):
        owners = [k for k, m in enumerate(modules) if name in m.layers]
        deltas = [modules[k].layers[name] for k in owners]
        if len(deltas[0].shape) != 2:
            raise InvalidInputError(f"layer '{name}' is not a matrix; tuning composes linear layers only")
        layer = layer_spectra(deltas, [w[k] for k in owners])
        if init == "spectral":
            lambdas, mu = spectral_coefficients(layer, flatten)
        else:
            lambdas, mu = [torch.ones_like(s) for s in layer.sigma], None
        lambdas = [scale * w[k] * lam for k, lam in zip(owners, lambdas, strict=True)]
        if level == "lambda+mu" and mu is None:
            mu = torch.ones(min(layer.rank), dtype=torch.float64)
        factors[name] = layer_factors(layer, lambdas, mu if level == "lambda+mu" else None, owners)
    return Composition(model, factors, [m.name for m in modules], granularity, level)
