"""A kind's layers on a live model: each target gets a :class:`KindLayer` and a forward hook
adding ``B (A x)`` to its output (:mod:`eigenmix.compose.hooks`); the model's own weights
stay frozen and unchanged. :meth:`Attached.module` is what was learned, as a module of
low-rank updates (conv layers keep their kernel shape) that eigenmix and PEFT read."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from eigenmix.compose.hooks import add_to_output
from eigenmix.errors import InvalidInputError
from eigenmix.kinds.registry import KindLayer, KindParams, LayerBasis, LayerContext, TrainKind
from eigenmix.modules import LowRankDelta, Module
from eigenmix.seeds import derived_seed


def target_layers(model: nn.Module, pattern: str) -> list[str]:
    """The ``nn.Linear`` / ungrouped ``nn.Conv2d`` layers whose full name matches ``pattern``, in model order."""
    names = [n for n, m in model.named_modules() if re.fullmatch(pattern, n) and isinstance(m, nn.Linear | nn.Conv2d)]
    names = [n for n in names if getattr(model.get_submodule(n), "groups", 1) == 1]
    if not names:
        raise InvalidInputError(f"no nn.Linear or ungrouped nn.Conv2d layer of the model matches '{pattern}'")
    return names


@dataclass
class Attached:
    """The trainable layers of one module being trained, hooked onto a model."""

    layers: dict[str, KindLayer]
    kernels: dict[str, tuple[int, ...] | None]
    handles: list[RemovableHandle]

    def parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in layer.parameters()]

    def module(self, name: str, base_model: str | None = None) -> Module:
        """The learned updates ``ΔW = B A`` (detached) as a module of low-rank layers."""
        with torch.no_grad():
            deltas = {n: _delta(layer.factors(), self.kernels[n]) for n, layer in self.layers.items()}
        return Module(name, deltas, base_model=base_model)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _delta(factors: tuple[Tensor, Tensor], kernel: tuple[int, ...] | None) -> LowRankDelta:
    B, A = factors
    return LowRankDelta(B.detach().contiguous().clone(), A.detach().contiguous().clone(), 1.0, kernel)


def attach(
    model: nn.Module,
    kind: TrainKind,
    params: KindParams,
    names: list[str],
    *,
    seed: int,
    library: Mapping[str, LayerBasis] | None = None,
) -> Attached:
    """Hook a ``kind`` layer onto each of ``names`` (layers of ``model``); each layer's random
    start is seeded by ``seed`` and its name. A kind that ``needs_library`` gets each layer's
    basis from ``library`` (an empty library leaves it plain LoRA)."""
    if kind.needs_library and library is None:
        raise InvalidInputError(f"training kind '{kind.name}' needs a library of modules to stay orthogonal to")
    layers: dict[str, KindLayer] = {}
    kernels: dict[str, tuple[int, ...] | None] = {}
    handles: list[RemovableHandle] = []
    for name in names:
        weight: Tensor = model.get_submodule(name).get_parameter("weight").detach()
        ctx = LayerContext(torch.Generator().manual_seed(derived_seed(seed, name)), (library or {}).get(name))
        layer = kind.layer(weight.reshape(weight.shape[0], -1).float(), params, ctx)
        layers[name], kernels[name] = layer, (tuple(weight.shape) if weight.ndim > 2 else None)
        handles.append(add_to_output(model, name, tuple(weight.shape), _update(layer)))
    return Attached(layers, kernels, handles)


def _update(layer: KindLayer) -> Callable[[Tensor], Tensor]:
    def update(x: Tensor) -> Tensor:
        B, A = layer.factors()
        return (x @ A.T) @ B.T

    return update
