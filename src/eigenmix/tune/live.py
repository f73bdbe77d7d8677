"""A live model whose target linears add a composition of modules with learnable spectra.

``Composition`` wraps a frozen base model: each target linear gets a forward hook that adds
``x ΔW(λ, μ)ᵀ`` (:func:`eigenmix.tune.factors.apply_delta`); its parameters are only the
coefficients. How many there are is the *granularity*:

- ``"direction"``: one λ per module direction per layer (eigenmix's default; ``Σ_k r_k``
  per layer);
- ``"layer"``: one factor per module per layer on the starting λ (AdaMerging's layer-wise
  coefficients);
- ``"module"``: one factor per module for the whole model (task-wise; LoRAHub's weights).

With ``level="lambda+mu"`` each layer also learns μ, one weight per joint direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from eigenmix.errors import InvalidInputError
from eigenmix.merging.methods.spectral import spectral_coefficients
from eigenmix.modules import Module, layer_spectra
from eigenmix.tune.factors import LayerFactors, apply_delta, layer_factors

Granularity = Literal["direction", "layer", "module"]
Level = Literal["lambda", "lambda+mu"]
Init = Literal["spectral", "task_arithmetic"]


def _key(layer: str) -> str:
    return layer.replace(".", "/")  # parameter names may not hold dots


class Composition(nn.Module):
    """A frozen ``model`` plus learnable spectral coefficients for ``factors``' layers.

    Args:
        model: the base model; its parameters are frozen.
        factors: layer name (a submodule of ``model`` that is an ``nn.Linear``) → factors.
        module_names: the K modules, in owner order.
        granularity: see the module docstring.
        level: ``"lambda"``, or ``"lambda+mu"`` (every layer's factors need μ pieces).
    """

    def __init__(
        self,
        model: nn.Module,
        factors: dict[str, LayerFactors],
        module_names: Sequence[str],
        granularity: Granularity = "direction",
        level: Level = "lambda",
    ) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.factors, self.module_names = factors, tuple(module_names)
        self.granularity, self.level = granularity, level
        K = len(self.module_names)
        self.lam = nn.ParameterDict()
        if granularity == "direction":
            self.lam.update({_key(n): nn.Parameter(f.lam0.float()) for n, f in factors.items()})
        elif granularity == "layer":
            self.lam.update({_key(n): nn.Parameter(torch.ones(K)) for n in factors})
        elif granularity == "module":
            self.lam["all"] = nn.Parameter(torch.ones(K))
        else:
            raise InvalidInputError(f"unknown granularity '{granularity}' (direction, layer or module)")
        self.mu = nn.ParameterDict()
        if level == "lambda+mu":
            if any(f.mu0 is None for f in factors.values()):
                raise InvalidInputError("level 'lambda+mu' needs factors built with μ")
            self.mu.update({_key(n): nn.Parameter(f.mu0.float()) for n, f in factors.items()})  # type: ignore[union-attr]
        elif level != "lambda":
            raise InvalidInputError(f"unknown level '{level}' (lambda or lambda+mu)")
        self._hooks = [self._attach(name) for name in factors]

    def _attach(self, name: str) -> torch.utils.hooks.RemovableHandle:
        try:
            linear = self.model.get_submodule(name)
        except AttributeError as err:
            raise InvalidInputError(f"the model has no layer '{name}'") from err
        f = self.factors[name]
        if not isinstance(linear, nn.Linear) or tuple(linear.weight.shape) != f.shape:
            raise InvalidInputError(f"layer '{name}' is not an nn.Linear of shape {f.shape}")
        return linear.register_forward_hook(lambda _, inputs, out: out + apply_delta(inputs[0], f, self.lambdas(name), self.mus(name)))

    def lambdas(self, layer: str) -> Tensor:
        """λ of every direction of ``layer`` ``(D,)``, as the forward pass uses it."""
        f = self.factors[layer]
        if self.granularity == "direction":
            return self.lam[_key(layer)]
        tied = self.lam[_key(layer)] if self.granularity == "layer" else self.lam["all"]
        return f.lam0.to(tied.dtype) * tied[f.owner]

    def mus(self, layer: str) -> Tensor | None:
        """μ of ``layer`` ``(J,)``, or None at level ``"lambda"``."""
        return self.mu[_key(layer)] if self.level == "lambda+mu" else None

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def penalty(self) -> Tensor:
        """Mean squared distance of every coefficient from its starting value (λ relative to
        the data-free λ0's mean magnitude per layer, tied factors and μ from 1)."""
        terms = []
        for name, f in self.factors.items():
            lam = self.lambdas(name)
            terms.append(((lam - f.lam0.to(lam.dtype)) / f.lam0.abs().mean().clamp(min=1e-12).to(lam.dtype)).square().mean())
            mu = self.mus(name)
            if mu is not None:
                terms.append((mu - f.mu0.to(mu.dtype)).square().mean())  # type: ignore[union-attr]
        return torch.stack(terms).mean()

    def n_coefficients(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def detach_hooks(self) -> None:
        """Give the base model back unchanged (the hooks removed)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


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
