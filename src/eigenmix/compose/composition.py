"""A frozen model whose target linears add a composition of modules with learnable spectra.

``Composition`` wraps a frozen base model: each target linear gets a forward hook
(:func:`eigenmix.compose.hooks.add_to_output`) that adds ``x ΔW(λ, μ)ᵀ``
(:func:`eigenmix.compose.factors.apply_delta`); its parameters are only the coefficients.
How many there are is the *granularity*:

- ``"direction"``: one λ per module direction per layer (eigenmix's default; ``Σ_k r_k``
  per layer);
- ``"layer"``: one factor per module per layer on the starting λ (AdaMerging's layer-wise
  coefficients);
- ``"module"``: one factor per module for the whole model (task-wise; LoRAHub's weights).

With ``level="lambda+mu"`` each layer also learns μ, one weight per joint direction.
``eigenmix.tune`` builds one from a data-free merge and learns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from eigenmix.compose.factors import LayerFactors, apply_delta
from eigenmix.compose.hooks import add_to_output
from eigenmix.errors import InvalidInputError

Granularity = Literal["direction", "layer", "module"]
Level = Literal["lambda", "lambda+mu"]


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
        f = self.factors[name]
        return add_to_output(self.model, name, f.shape, lambda x: apply_delta(x, f, self.lambdas(name), self.mus(name)))

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
