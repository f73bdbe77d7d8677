"""``eigenmix demo``: a short, real end-to-end job on the bundled data.

Train two small LoRA adapters on all-MiniLM-L6-v2 (two bundled tasks, a few steps),
save them in PEFT format under ``--out/<task>`` (written atomically as one folder), inspect
them, and print their subspace overlap.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from eigenmix.cli.console import make_console
from eigenmix.cli.options import FORCE_HELP
from eigenmix.data import load_tasks
from eigenmix.inspect import module_overlap, module_report, overlap_summary, overlap_table, spectra_summary, spectra_table
from eigenmix.io import read_lora_adapter
from eigenmix.io.atomic import atomic_dir, destination

MARKER = "demo.json"


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the two trained adapters (one sub-folder per task)."),
    tasks: str = typer.Option("sst2,ag_news", help="Two bundled tasks, comma-separated."),
    steps: int = typer.Option(40, min=1, help="Training steps per adapter."),
    eval_rows: int = typer.Option(256, min=1, help="Test rows used to report accuracy."),
    seed: int = typer.Option(0, help="Seed of initialisation and batch order."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Train two LoRA adapters on MiniLM, inspect them, and print their subspace overlap."""
    from eigenmix.train import LoraRecipe, evaluate_adapter, train_adapter

    console = make_console()
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if len(names) != 2 or names[0] == names[1]:
        raise typer.BadParameter("give exactly two different tasks, e.g. sst2,ag_news", param_hint="--tasks")
    loaded = load_tasks(names=names)
    dest = destination(out, overwrite=force, marker=MARKER)
    recipe = LoraRecipe(steps=steps, seed=seed)
    start = time.perf_counter()
    summary = {}
    with atomic_dir(dest) as tmp:
        for task in loaded:
            with Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
                TimeElapsedColumn(), console=console,
            ) as bar:  # fmt: skip
                job = bar.add_task(f"training {task.name}", total=steps, loss="-")
                progress = lambda s, loss, j=job, b=bar: b.update(j, advance=1, loss=f"{loss:.3f}")  # noqa: E731
                stats = train_adapter(task, recipe, tmp / task.name, on_step=progress)
            acc = evaluate_adapter(tmp / task.name, task, limit=eval_rows, max_length=recipe.max_length)
            rows = min(eval_rows, len(task.test))
            summary[task.name] = {"steps": steps, "train_seconds": stats["train_seconds"], "test_accuracy": acc, "test_rows": rows}
            took = stats["train_seconds"]
            console.print(f"{task.name}: {steps} steps in {took:.1f} s, test accuracy {acc:.3f} on {rows} rows → {out / task.name}")
        (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    modules = [read_lora_adapter(out / name) for name in names]
    for module in modules:
        reports = module_report(module)
        console.print(spectra_table(reports[:6], title=f"{module.name}: first 6 of {len(reports)} layers"))
        console.print(spectra_summary(reports))
    rows_ = module_overlap(*modules)
    console.print(overlap_table(rows_, title=f"subspace overlap: {modules[0].name} vs {modules[1].name}"))
    console.print(overlap_summary(rows_))
    console.print(f"demo done in {time.perf_counter() - start:.1f} s")
