"""``eigenmix inspect`` and ``eigenmix overlap``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from eigenmix.cli.console import make_console
from eigenmix.errors import InvalidInputError
from eigenmix.inspect import (
    coefficients_table,
    module_overlap,
    module_report,
    overlap_summary,
    overlap_table,
    spectra_summary,
    spectra_table,
)
from eigenmix.io import read_lora_adapter
from eigenmix.io.atomic import Destination, atomic_file, destination
from eigenmix.merging import check_compatible
from eigenmix.tune.export import read_coefficient_summary

REPORT = "eigenmix-inspect"  # what marks an earlier report, which --force may replace


def inspect(
    path: Path = typer.Argument(..., help="A PEFT LoRA adapter folder, or a library folder (eigenmix library build)."),
    top: int = typer.Option(4, min=1, help="Singular values shown per layer."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the per-layer report to this JSON file (atomically)."),
    force: bool = typer.Option(False, "--force", help="Replace the --json file if it is an earlier report of eigenmix inspect."),
) -> None:
    """Per-layer spectrum of an adapter: shape, rank, top singular values, rank for 90/99% energy;
    for an ``eigenmix tune`` output, also the learned coefficients per layer and module; for a
    library, its modules and each one's spectra."""
    dest = destination(json_out, overwrite=force, inputs=[path], marker=f"format={REPORT}", folder=False) if json_out is not None else None
    console = make_console()
    if (path / "library.json").is_file():
        _inspect_library(path, top, dest)
        return
    module = read_lora_adapter(path)
    reports = module_report(module)
    console.print(spectra_table(reports, title=f"{module.name}  ({module.base_model or 'unknown base'})", top=top))
    console.print(spectra_summary(reports))
    coefficients = path / "coefficients.json"
    if coefficients.is_file():
        summary = read_coefficient_summary(coefficients)
        title = f"learned coefficients ({summary['granularity']}, {summary['level']}; {summary['n_coefficients']} numbers)"
        console.print(coefficients_table(summary, title=title))
    if dest is not None:
        with atomic_file(dest) as tmp:
            tmp.write_text(json.dumps({"format": REPORT, "adapter": str(path), "layers": [asdict(r) for r in reports]}, indent=2) + "\n")


def overlap(
    first: Path = typer.Argument(..., help="A PEFT LoRA adapter folder."),
    second: Path = typer.Argument(..., help="Another adapter of the same base model."),
) -> None:
    """Per-layer subspace overlap (principal angles) of two adapters' column and row spaces."""
    a, b = read_lora_adapter(first), read_lora_adapter(second)
    check_compatible([a, b])
    rows = module_overlap(a, b)
    if not rows:
        raise InvalidInputError(f"{first} and {second} share no matrix layer of the same shape: there is nothing to compare")
    console = make_console()
    console.print(overlap_table(rows, title=f"subspace overlap: {a.name} vs {b.name}"))
    console.print(overlap_summary(rows))


def _inspect_library(path: Path, top: int, dest: Destination | None) -> None:
    from eigenmix.cli.library_cmd import library_table
    from eigenmix.compose import load_library
    from eigenmix.modules import Module, SpectralDelta

    library = load_library(path)
    console = make_console()
    console.print(library_table(library, f"library {path}: {len(library)} modules of {library.base_model or 'an unnamed base model'}"))
    out = {}
    for entry in library:
        reports = module_report(Module(entry.name, {layer: SpectralDelta(*f) for layer, f in entry.layers.items()}))
        console.print(spectra_table(reports, title=f"module {entry.name}", top=top))
        console.print(spectra_summary(reports))
        out[entry.name] = [asdict(r) for r in reports]
    if dest is not None:
        with atomic_file(dest) as tmp:
            tmp.write_text(json.dumps({"format": REPORT, "library": str(path), "modules": out}, indent=2) + "\n")
