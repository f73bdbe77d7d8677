"""Replace a model's ``nn.Linear`` and ``nn.Conv2d`` layers by ``SpectralMoELinear`` /
``SpectralMoEConv2d`` in place (PEFT-style matching)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from eigenmix.errors import InvalidInputError
from eigenmix.moe.conv import SpectralMoEConv2d
from eigenmix.moe.functional import Mode
from eigenmix.moe.layer import SpectralMoELinear

TRAINABLE = ("scales", "gate", "gate_bias", "router", "router_bias")


@dataclass(frozen=True)
class ConvertReport:
    """What :func:`convert` did."""

    replaced: tuple[str, ...]
    trainable_params: int
    total_params: int

    def __str__(self) -> str:
        share = 100 * self.trainable_params / max(self.total_params, 1)
        return f"{len(self.replaced)} layers replaced; trainable params: {self.trainable_params:,} of {self.total_params:,} ({share:.3f}%)"


def matches(name: str, target_modules: str | Sequence[str]) -> bool:
    """PEFT's rule: a string is a regex that must match the whole name; a list names
    modules by their full name or by a suffix after a dot."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def convert(
    model: nn.Module,
    target_modules: str | Sequence[str],
    n_experts: int,
    rank: int | None = None,
    *,
    router: str = "token",
    mode: Mode = "spectral",
    gate: bool = True,
    train_bases: bool = False,
) -> ConvertReport:
    """Swap every matching ``nn.Linear`` of ``model`` for :meth:`SpectralMoELinear.from_linear`
    and every matching ``nn.Conv2d`` for :meth:`SpectralMoEConv2d.from_conv`, and freeze
    everything but the scales, gates and routers (and ``U``, ``V`` with ``train_bases``).

    Raises:
        InvalidInputError: no module matches, a match is neither an ``nn.Linear`` nor a
            ``groups = 1`` ``nn.Conv2d``, or a layer argument is bad (rank too large,
            ``n_experts < 1``, …).
    """
    found = [(name, module) for name, module in model.named_modules() if name and matches(name, target_modules)]
    if not found:
        raise InvalidInputError(f"target_modules {target_modules!r} match no module of {type(model).__name__}")
    for name, module in found:
        if not isinstance(module, nn.Linear | nn.Conv2d):
            raise InvalidInputError(f"target '{name}' is a {type(module).__name__}, not an nn.Linear or nn.Conv2d")
    settings = {"router": router, "mode": mode, "gate": gate}
    layers = {
        name: SpectralMoEConv2d.from_conv(module, n_experts, rank, **settings)
        if isinstance(module, nn.Conv2d)
        else SpectralMoELinear.from_linear(module, n_experts, rank, **settings)
        for name, module in found
    }  # every layer checked before the model is changed
    model.requires_grad_(False)
    for name, layer in layers.items():
        layer.train_bases(train_bases)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    for module in model.modules():
        if isinstance(module, SpectralMoELinear):
            for attr in TRAINABLE:
                param = getattr(module, attr)
                if param is not None:
                    param.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ConvertReport(tuple(n for n, _ in found), trainable, sum(p.numel() for p in model.parameters()))


def param_groups(model: nn.Module, lr: float) -> list[dict]:
    """Optimiser parameter groups for ``model``'s trainable parameters: the ``scales`` of
    every Spectral MoE layer at ``lr × layer.scales_lr_ratio``, everything else at ``lr``.

    Adam moves a parameter by about its learning rate per step, and a scale starts at 1,
    so at the learning rate of a low-rank adapter the spectrum hardly moves (the reasons
    and measurements are in :mod:`eigenmix.moe.layer`). Pass the result to
    ``torch.optim.AdamW``; groups with no parameters are left out.

    Returns:
        ``[{"params": [...], "lr": float}, …]``, every trainable parameter in exactly one group.
    """
    groups: dict[float, list[nn.Parameter]] = {}
    scales = {id(m.scales): lr * m.scales_lr_ratio for m in model.modules() if isinstance(m, SpectralMoELinear)}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault(scales.get(id(param), lr), []).append(param)
    return [{"params": params, "lr": group_lr} for group_lr, params in groups.items()]


def last_routing(model: nn.Module) -> dict[str, tuple[Tensor | None, Tensor | None]]:
    """``{layer: (gate (…, E), router (…, 1 | m))}`` of the last forward pass, per MoE layer."""
    return {name: (m.last_gate, m.last_router) for name, m in model.named_modules() if isinstance(m, SpectralMoELinear)}
