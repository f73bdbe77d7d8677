"""A module: one trained unit (adapter or fine-tune) as a mapping layer name → delta."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from eigenmix.modules.delta import AnyDelta, DenseDelta, LowRankDelta, SpectralDelta


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
        meta: format details a writer needs to reproduce the source (for a PEFT adapter:
            its config dict, ``fan_in_fan_out``, ``modules_to_save``).
    """

    name: str
    layers: Mapping[str, AnyDelta]
    base_model: str | None = None
    source: str | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.layers)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Layer name → delta shape, without reading lazily stored layers."""
        known = getattr(self.layers, "shapes", None)
        if known is not None:
            return dict(known)
        return {name: tuple(d.shape) for name, d in self.layers.items()}

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
                total += d.W.numel()
        return total

    def spectral(self) -> Module:
        """The same module with every matrix delta in spectral form (exact for low-rank)."""
        layers: dict[str, AnyDelta] = {}
        for name, d in self.layers.items():
            if isinstance(d, DenseDelta) and not d.is_matrix:
                layers[name] = d
            else:
                layers[name] = d.spectral()
        return Module(self.name, layers, self.base_model, self.source, dict(self.extras), dict(self.meta))
