"""``eigenmix merge`` and ``eigenmix methods``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eigenmix.cli.console import make_console
from eigenmix.cli.options import FORCE_HELP, described
from eigenmix.errors import InvalidInputError
from eigenmix.io.atomic import destination
from eigenmix.io.full_model import parse_shard_size
from eigenmix.merging import all_methods
from eigenmix.merging.config import ExecutorEntry, MergeConfig, OutputEntry, load_config
from eigenmix.merging.run import REPORT, MergeRun, load_modules, run_merge


def methods() -> None:
    """List the merge methods: kind, description, paper and parameters."""
    table = Table(title="merge methods", title_justify="left", show_lines=True)
    for column in ("method", "kind", "description", "paper", "parameters (default)"):
        table.add_column(column, overflow="fold")
    for m in all_methods():
        params = ", ".join(f"{name}={field.default}" for name, field in m.params.model_fields.items())
        kind = m.kind + (f"\ncalibrated ({m.calibration} inputs): needs a calibration section" if m.calibration else "")
        table.add_row(m.name, kind, m.description, m.paper + (f"\n{m.url}" if m.url else ""), params)
    make_console().print(table)


def merge(
    config: Path = typer.Argument(..., help="The merge config (YAML)."),
    out: Path = typer.Option(..., "--out", help="Output folder, written atomically."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config, the inputs and --out, print the plan, write nothing."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    threads: int | None = described(MergeConfig, "threads", None, "--threads", min=1),
    out_shard_size: str | None = described(OutputEntry, "shard_size", None, "--out-shard-size"),
    executor: str | None = described(ExecutorEntry, "kind", None, "--executor"),
) -> None:
    """Merge adapters or fine-tunes as a YAML config (eigenmix's, or mergekit's) says."""
    console = make_console()
    cfg = load_config(config)
    if threads is not None:
        cfg = cfg.model_copy(update={"threads": threads})
    if executor is not None:
        if executor not in ("local", "ray"):
            raise InvalidInputError(f"--executor '{executor}': choose from local, ray")
        cfg = cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"kind": executor})})
    if out_shard_size is not None:
        if cfg.output.kind != "full":
            raise InvalidInputError("--out-shard-size applies to output.kind 'full' only")
        parse_shard_size(out_shard_size)
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"shard_size": out_shard_size})})
    dest = destination(out, overwrite=force, inputs=[config, *cfg.inputs()], marker=REPORT)  # before loading anything
    modules = load_modules(cfg)
    from eigenmix.harness.calibration_rows import config_calibration

    calibration = config_calibration(cfg, modules)  # rows read, model loaded: every mistake before any work
    plan = cfg.plan(calibration.source if calibration is not None else None)
    layers = list(dict.fromkeys(name for m in modules for name in m.layers))
    table = Table(title=f"plan: {plan.method.name} ({plan.method.kind}) → {cfg.output.kind} at {out}", title_justify="left")
    for column in ("module", "weight", "layers", "source"):
        table.add_column(column)
    for entry, module in zip(cfg.modules, modules, strict=True):
        table.add_row(module.name, f"{entry.weight:g}", str(len(module.layers)), str(entry.path))
    console.print(table)
    console.print(f"parameters: {plan.params.model_dump()}; {len(layers)} layers; seed {plan.seed}")
    report = {}
    if calibration is not None:
        few = {n: (calibration.rows_used[n], asked) for n, asked in calibration.rows_asked.items() if calibration.rows_used[n] < asked}
        for name, (used, asked) in few.items():
            console.print(f"note: module {name} has {used} calibration rows; {asked} were asked for")
        report = {"calibration_rows_used": calibration.rows_used}
        console.print(f"calibration: {plan.method.calibration} inputs from {sum(calibration.rows_used.values())} rows")
    if dry_run:
        console.print("dry run: config, inputs and --out are valid; nothing written")
        return
    columns = (TextColumn("merging"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[layer]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("merge", total=len(layers), layer="")
        result = run_merge(
            cfg, dest, modules=modules, plan=plan, on_layer=lambda r: bar.update(job, advance=1, layer=r.layer), report=report,
        )  # fmt: skip
    console.print(result_table(result, out))
    short = [o for o in result.outputs if cfg.output.rank is not None and o.exact_rank < cfg.output.rank]
    if short:
        rank = cfg.output.rank
        console.print(f"note: output.rank {rank} exceeds the exact rank of {len(short)} layer(s); they are written at their exact rank")
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
