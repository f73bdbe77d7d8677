"""Rich tables for the inspection reports."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from eigenmix.inspect.overlap import LayerOverlap
from eigenmix.inspect.spectra import LayerReport


def spectra_table(reports: Sequence[LayerReport], *, title: str, top: int = 4) -> Table:
    """One row per layer: shape, rank, scale, top singular values, rank for 90/99% energy."""
    table = Table(title=title, title_justify="left")
    table.add_column("layer", overflow="fold")
    table.add_column("shape", justify="right")
    table.add_column("rank", justify="right")
    table.add_column("scale", justify="right")
    table.add_column(f"top {top} singular values", justify="right")
    table.add_column("r@90%", justify="right")
    table.add_column("r@99%", justify="right")
    for r in reports:
        top_s = " ".join(f"{s:.3g}" for s in r.singular_values[:top])
        shape = f"{r.shape[0]}×{r.shape[1]}" + (f" (conv {'×'.join(map(str, r.kernel))})" if r.kernel else "")
        table.add_row(r.layer, shape, str(r.rank), f"{r.scale:.3g}", top_s, str(r.rank_90), str(r.rank_99))
    return table


def spectra_summary(reports: Sequence[LayerReport]) -> str:
    """One line: layers, total rank, mean ranks for 90/99% energy, largest singular value."""
    if not reports:
        return "0 layers"
    n = len(reports)
    total_rank = sum(r.rank for r in reports)
    mean90 = sum(r.rank_90 for r in reports) / n
    mean99 = sum(r.rank_99 for r in reports) / n
    s_max = max((r.singular_values[0] for r in reports if r.singular_values), default=0.0)
    return (
        f"{n} layers, total rank {total_rank}; mean rank for 90% energy {mean90:.1f}, "
        f"for 99% {mean99:.1f}; largest singular value {s_max:.3g}"
    )


def overlap_table(rows: Sequence[LayerOverlap], *, title: str) -> Table:
    """One row per shared layer: ranks, column/row overlap, smallest principal angles."""
    table = Table(title=title, title_justify="left")
    table.add_column("layer", overflow="fold")
    table.add_column("ranks", justify="right")
    table.add_column("column overlap", justify="right")
    table.add_column("row overlap", justify="right")
    table.add_column("min angle col / row (°)", justify="right")
    table.add_column("chance col / row", justify="right")
    for r in rows:
        table.add_row(
            r.layer,
            f"{r.ranks[0]}, {r.ranks[1]}",
            f"{r.column_overlap:.3f}",
            f"{r.row_overlap:.3f}",
            f"{r.min_column_angle:.1f} / {r.min_row_angle:.1f}",
            f"{r.chance_column:.3f} / {r.chance_row:.3f}",
        )
    return table


def overlap_summary(rows: Sequence[LayerOverlap]) -> str:
    """One line: mean column and row overlap against chance."""
    if not rows:
        return "no shared layers"
    n = len(rows)
    col = sum(r.column_overlap for r in rows) / n
    row = sum(r.row_overlap for r in rows) / n
    chance_col = sum(r.chance_column for r in rows) / n
    chance_row = sum(r.chance_row for r in rows) / n
    return (
        f"{n} shared layers; mean column overlap {col:.3f} (chance {chance_col:.3f}), mean row overlap {row:.3f} (chance {chance_row:.3f})"
    )


def coefficients_table(summary: dict, *, title: str) -> Table:
    """Learned coefficients (``coefficients.json`` of ``eigenmix tune``): one row per layer,
    per module its mean λ (its starting mean) and its share of the layer's update energy."""
    modules = summary["modules"]
    table = Table(title=title, title_justify="left")
    table.add_column("layer", overflow="fold")
    for name in modules:
        table.add_column(f"{name}\nλ̄ (λ0) share", justify="right")
    if any("mu" in entry for entry in summary["layers"].values()):
        table.add_column("μ mean [min, max]", justify="right")
    for layer, entry in summary["layers"].items():
        cells = []
        for name in modules:
            row = entry["modules"].get(name)
            cells.append("-" if row is None else f"{row['lambda_mean']:.3f} ({row['lambda0_mean']:.3f}) {100 * row['energy_share']:.0f}%")
        if "mu" in entry:
            mu = entry["mu"]
            cells.append(f"{mu['mean']:.3f} [{mu['min']:.2f}, {mu['max']:.2f}]")
        table.add_row(layer, *cells)
    return table
