"""Per-layer spectral reports of a module: shape, rank, top singular values, and the
rank each layer needs to keep 90% / 99% of its spectral energy."""

from __future__ import annotations

import re
from dataclasses import dataclass

from eigenmix.modules import DenseDelta, LowRankDelta, Module, SpectralDelta
from eigenmix.spectral import rank_for_energy


@dataclass(frozen=True)
class LayerReport:
    """The spectrum of one layer's delta.

    Attributes:
        layer: layer name.
        shape: ``(m, n)``.
        rank: stored rank (LoRA ``r``, spectral ``k``, or ``min(m, n)`` for dense).
        scale: LoRA scale (1.0 for other forms).
        singular_values: all singular values of the delta (scale included), descending.
        rank_90: rank that keeps 90% of the energy.
        rank_99: rank that keeps 99% of the energy.
        kernel: a conv layer's kernel shape ``(out, in/g, *k)`` whose matrix view ``shape`` is
            (None for a matrix).
    """

    layer: str
    shape: tuple[int, int]
    rank: int
    scale: float
    singular_values: tuple[float, ...]
    rank_90: int
    rank_99: int
    kernel: tuple[int, ...] | None = None

    @property
    def frobenius(self) -> float:
        return float(sum(s * s for s in self.singular_values) ** 0.5)


def layer_report(layer: str, delta: LowRankDelta | SpectralDelta | DenseDelta) -> LayerReport:
    """Spectrum of one matrix delta (exact, in float64; factored for low-rank deltas)."""
    S = delta.svd64().S
    if isinstance(delta, LowRankDelta):
        rank, scale = delta.rank, delta.scale
    elif isinstance(delta, SpectralDelta):
        rank, scale = delta.rank, 1.0
    else:
        rank, scale = min(delta.shape), 1.0
    return LayerReport(
        layer=layer,
        shape=(int(delta.shape[0]), int(delta.shape[1])),
        rank=rank,
        scale=float(scale),
        singular_values=tuple(float(s) for s in S),
        rank_90=rank_for_energy(S, 0.90),
        rank_99=rank_for_energy(S, 0.99),
        kernel=tuple(int(k) for k in delta.kernel) if delta.kernel else None,
    )


def _natural(name: str) -> list[int | str]:
    """``blocks.2`` before ``blocks.10``: the numbers in a layer name compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def module_report(module: Module) -> list[LayerReport]:
    """:func:`layer_report` for every matrix layer of ``module``, in layer order (block numbers as numbers)."""
    reports = []
    for name, delta in sorted(module.layers.items(), key=lambda item: _natural(item[0])):
        if isinstance(delta, DenseDelta) and not delta.is_matrix:
            continue
        reports.append(layer_report(name, delta))
    return reports
