"""How much two modules' subspaces overlap, layer by layer.

For each shared layer the column spaces (outputs written) and row spaces (inputs read)
of the two deltas are compared by :func:`eigenmix.spectral.subspace_overlap` (mean
squared cosine of the principal angles) and by the smallest principal angle. Two random
rank-r subspaces of R^m overlap about ``r / m``; 1 means one contains the other.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from eigenmix.modules import AnyDelta, Module, delta_dtype
from eigenmix.spectral import SVD, default_rtol, numerical_rank, principal_angles, subspace_overlap


@dataclass(frozen=True)
class LayerOverlap:
    """Overlap of two modules' deltas in one layer.

    Attributes:
        layer: layer name.
        ranks: numerical ranks of the two deltas.
        column_overlap: overlap of the column (output) spaces, in [0, 1].
        row_overlap: overlap of the row (input) spaces, in [0, 1].
        min_column_angle: smallest principal angle between column spaces, degrees.
        min_row_angle: smallest principal angle between row spaces, degrees.
        chance_column: overlap expected of random column spaces of these ranks, ``max(r) / m``.
        chance_row: the same for row spaces, ``max(r) / n``.
    """

    layer: str
    ranks: tuple[int, int]
    column_overlap: float
    row_overlap: float
    min_column_angle: float
    min_row_angle: float
    chance_column: float
    chance_row: float


def module_overlap(a: Module, b: Module) -> list[LayerOverlap]:
    """Per-layer subspace overlap of the matrix layers that ``a`` and ``b`` share."""
    return _overlaps(a, b, _spectra(a), _spectra(b))


def _spectra(module: Module) -> dict[str, SVD]:
    """The numerical spectrum of each matrix layer (each SVD once, however many pairs use it)."""
    return {layer: _numerical_spectrum(d) for layer, d in module.layers.items() if len(d.shape) == 2}


def _overlaps(a: Module, b: Module, spectra_a: dict[str, SVD], spectra_b: dict[str, SVD]) -> list[LayerOverlap]:
    rows = []
    for layer, sa in spectra_a.items():
        if layer not in spectra_b or a.layers[layer].shape != b.layers[layer].shape:
            continue
        sb = spectra_b[layer]
        if sa.S.numel() == 0 or sb.S.numel() == 0:
            continue
        col_angles = principal_angles(sa.U, sb.U)
        row_angles = principal_angles(sa.V, sb.V)
        m, n = a.layers[layer].shape
        rows.append(
            LayerOverlap(
                layer=layer,
                ranks=(sa.S.numel(), sb.S.numel()),
                column_overlap=subspace_overlap(sa.U, sb.U),
                row_overlap=subspace_overlap(sa.V, sb.V),
                min_column_angle=math.degrees(float(col_angles[0])),
                min_row_angle=math.degrees(float(row_angles[0])),
                chance_column=max(sa.S.numel(), sb.S.numel()) / m,
                chance_row=max(sa.S.numel(), sb.S.numel()) / n,
            )
        )
    return rows


def _numerical_spectrum(delta: AnyDelta) -> SVD:
    """Exact float64 SVD of a matrix delta with numerically zero directions dropped."""
    f = delta.svd64()
    return f.truncate(numerical_rank(f.S, default_rtol(delta_dtype(delta))))


def mean_overlap(modules: Sequence[Module]) -> dict[str, float]:
    """How much a set of modules overlaps, as one number per measure: the mean over every
    pair of modules and every matrix layer they share of :func:`module_overlap`'s column and
    row overlaps and smallest principal angles (degrees), beside the chance overlap."""
    spectra = [_spectra(m) for m in modules]
    pairs = itertools.combinations(range(len(modules)), 2)
    rows = [row for i, j in pairs for row in _overlaps(modules[i], modules[j], spectra[i], spectra[j])]
    if not rows:
        return {"pairs": 0}
    fields = ("column_overlap", "row_overlap", "min_column_angle", "min_row_angle", "chance_column", "chance_row")
    mean = {f: sum(getattr(r, f) for r in rows) / len(rows) for f in fields}
    return {"pairs": len(modules) * (len(modules) - 1) // 2, "layers": len(rows), **mean}
