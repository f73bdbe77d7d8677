"""``eigenmix tune``: learn the spectral coefficients of a composition from a few rows per task."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eigenmix.cli.console import make_console
from eigenmix.cli.options import FORCE_HELP
from eigenmix.io.atomic import destination


def tune(
    config: Path = typer.Argument(..., help="The tune config (YAML)."),
    out: Path = typer.Option(..., "--out", help="Output folder, written atomically."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config, the inputs and --out, print the plan, write nothing."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Compose adapters from a data-free merge and learn their coefficients as a YAML config says."""
    from eigenmix.harness.tune_config import load_tune_config
    from eigenmix.harness.tune_run import REPORT, prepare_tune, run_tune

    console = make_console()
    cfg = load_tune_config(config)
    dest = destination(out, overwrite=force, inputs=[config, *cfg.inputs()], marker=REPORT)
    inputs = prepare_tune(cfg)  # tasks, modules and heads read and checked before the dry run returns
    spec = cfg.tune
    plan = Table(
        title=f"plan: {spec.init} → tune ({spec.settings.objective}, {spec.granularity}, {spec.level}) at {out}", title_justify="left"
    )
    for column in ("module", "task", "path"):
        plan.add_column(column)
    for entry in cfg.modules:
        plan.add_row(entry.path.name, entry.task_name, str(entry.path))
    console.print(plan)
    console.print(f"{spec.rows} rows per task, {cfg.val_rows} validation rows; search {spec.search}; seed {cfg.seed}")
    if dry_run:
        console.print("dry run: config, inputs and --out are valid; nothing written")
        return
    columns = (TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("tune", total=spec.settings.steps if spec.search == "adamw" else None, note="")
        run = run_tune(cfg, dest, inputs=inputs, on_step=lambda _, loss: bar.update(job, advance=1, note=f"loss {loss:.4f}"))
    r = run.result
    console.print(
        f"{r.n_coefficients} coefficients; {r.steps} steps (best at {r.best_step}); "
        f"validation {spec.settings.objective}: {r.history[0]['val']:.4f} → {r.best_val:.4f}; {r.seconds:.1f} s"
    )
    console.print(f"written to {out}/ (PEFT adapter, heads/, coefficients.json, tune_report.json); `eigenmix inspect {out}` shows them")
