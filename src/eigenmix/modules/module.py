"""A module: one trained unit (adapter or fine-tune) as a mapping layer name → delta, plus
typed records of where it came from."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from eigenmix.modules.delta import AnyDelta, DenseDelta, LowRankDelta, SpectralDelta, delta_dtype


@dataclass(frozen=True)
class PeftSource:
    """The PEFT LoRA adapter a module was read from: what a writer needs to reproduce it.

    Attributes:
        config: its ``adapter_config.json`` as read (checked by ``eigenmix.io.peft_config``).
    """

    config: Mapping[str, Any]

    @property
    def modules_to_save(self) -> tuple[str, ...]:
        return tuple(self.config.get("modules_to_save") or ())


@dataclass(frozen=True)
class MergeRecord:
    """How a merged module was made."""

    method: str
    params: Mapping[str, Any]
    weights: tuple[float, ...]
    seed: int
    sources: tuple[str, ...]


@dataclass
class Module:
    """One module's per-layer updates plus what a merge must carry along.

    Attributes:
        name: a short human name (the adapter folder's name by default).
        layers: layer name (e.g. ``"bert.encoder.layer.0.attention.self.query"``, relative
            to the base model, no ``base_model.model.`` prefix) → delta in ``(out, in)``
            orientation.
        base_model: the base model's id or path, as the source recorded it.
        source: where the module was read from.
        extras: tensors that are not deltas of base weights (classifier heads saved by
            PEFT's ``modules_to_save``, trained biases): kept verbatim, keyed by their
            name relative to the base model, so that a merge can carry or report them.
        fan_in_fan_out: the base model stores these layers ``(in, out)`` (GPT-2's
            ``Conv1D``); the deltas are ``(out, in)`` regardless, so only a full-model
            writer needs it.
        peft: the PEFT adapter it was read from (None for task vectors and merges).
        merged: how it was merged (None for read modules).
    """

    name: str
    layers: Mapping[str, AnyDelta]
    base_model: str | None = None
    source: str | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    fan_in_fan_out: bool = False
    peft: PeftSource | None = None
    merged: MergeRecord | None = None

    def __len__(self) -> int:
        return len(self.layers)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Layer name → the updated tensor's stored shape (a conv kernel's own shape, not its
        matrix view), without reading lazily stored layers."""
        known = getattr(self.layers, "shapes", None)
        if known is not None:
            return dict(known)
        return {name: tuple(d.tensor_shape) for name, d in self.layers.items()}

    def dtypes(self) -> set[torch.dtype]:
        """The stored dtypes of the layers, without reading lazily stored layers."""
        known = getattr(self.layers, "dtypes", None)
        if known is not None:
            return set(known.values())
        return {delta_dtype(d) for d in self.layers.values()}

    @property
    def is_lowrank(self) -> bool:
        """True when every layer is low-rank or spectral (no dense delta)."""
        return all(isinstance(d, LowRankDelta | SpectralDelta) for d in self.layers.values())

    def n_parameters(self) -> int:
        """Stored numbers of all deltas (factors count, not the dense size)."""
        total = 0
        for d in self.layers.values():
            if isinstance(d, LowRankDelta):
                total += d.B.numel() + d.A.numel()
            elif isinstance(d, SpectralDelta):
                total += d.U.numel() + d.S.numel() + d.V.numel()
            else:
                total += math.prod(d.shape)
        return total

    def spectral(self) -> Module:
        """The same module with every matrix delta in spectral form (exact for low-rank)."""
        layers: dict[str, AnyDelta] = {}
        for name, d in self.layers.items():
            layers[name] = d if isinstance(d, DenseDelta) and not d.is_matrix else d.spectral()
        return replace(self, layers=layers, extras=dict(self.extras))
