"""``eigenmix merge`` and ``eigenmix methods``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eigenmix.cli.console import make_console
from eigenmix.io.atomic import check_destination
from eigenmix.merge import all_methods, get_method
from eigenmix.merge.config import load_config
from eigenmix.merge.run import MergeRun, load_modules, run_merge


def methods() -> None:
    """List the merge methods: kind, description, paper and parameters."""
    table = Table(title="merge methods", title_justify="left", show_lines=True)
    for column in ("method", "kind", "description", "paper", "parameters (default)"):
        table.add_column(column, overflow="fold")
    for m in all_methods():
        params = ", ".join(f"{name}={field.default}" for name, field in m.params.model_fields.items())
        table.add_row(m.name, m.kind, m.description, f"{m.paper}\n{m.url}", params)
    make_console().print(table)


def merge(
    config: Path = typer.Argument(..., help="The merge config (YAML)."),
    out: Path = typer.Option(..., "--out", help="Output folder, written atomically."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config and the inputs, print the plan, write nothing."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Merge adapters or fine-tunes as a YAML config says."""
    console = make_console()
    cfg = load_config(config)
    if not dry_run:
        check_destination(out, overwrite=force)  # before loading anything
    modules = load_modules(cfg)
    layers = list(dict.fromkeys(name for m in modules for name in m.layers))
    method = get_method(cfg.method)
    plan = Table(title=f"plan: {cfg.method} ({method.kind}) → {cfg.output.kind} at {out}", title_justify="left")
    for column in ("module", "weight", "layers", "source"):
        plan.add_column(column)
    for entry, module in zip(cfg.modules, modules, strict=True):
        plan.add_row(module.name, f"{entry.weight:g}", str(len(module.layers)), str(entry.path))
    console.print(plan)
    console.print(f"parameters: {method.parse_params(cfg.parameters).model_dump()}; {len(layers)} layers; seed {cfg.seed}")
    if dry_run:
        console.print("dry run: config and inputs are valid; nothing written")
        return
    columns = (TextColumn("merging"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[layer]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("merge", total=len(layers), layer="")
        result = run_merge(cfg, out, overwrite=force, modules=modules, on_layer=lambda r: bar.update(job, advance=1, layer=r.layer))
    console.print(result_table(result, out))
    console.print(f"{len(result.layers)} layers in {result.seconds:.2f} s")


def result_table(result: MergeRun, out: Path) -> Table:
    """Per layer: shape, written rank, retained energy, seconds."""
    table = Table(title=f"merged → {out}", title_justify="left")
    for column in ("layer", "shape", "rank", "retained energy", "seconds"):
        table.add_column(column, justify="right" if column != "layer" else "left")
    outputs = {o.layer: o for o in result.outputs}
    for r in result.layers:
        o = outputs.get(r.layer)
        energy = f"{o.retained_energy:.4f}" if o else "-"
        table.add_row(r.layer, "×".join(map(str, r.shape)), str(o.rank if o else r.rank), energy, f"{r.seconds:.3f}")
    return table
