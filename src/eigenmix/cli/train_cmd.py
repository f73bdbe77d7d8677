"""``eigenmix train``: train one module of a training kind (``eigenmix.kinds``) on a
text task, as a YAML config says; ``--kinds`` lists the kinds and their parameters."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eigenmix.cli.console import make_console
from eigenmix.cli.options import FORCE_HELP


def train(
    config: Path | None = typer.Argument(None, help="The train config (YAML)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (a PEFT adapter with its head), written atomically."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config, the inputs and --out, print the plan, write nothing."),
    kinds: bool = typer.Option(False, "--kinds", help="List the training kinds and their parameters, and exit."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Train a module in spectral form (lora, pissa, svf, spectral_adapter, or orthogonal to a library) as a YAML config says."""
    from eigenmix.errors import InvalidInputError
    from eigenmix.kinds import all_kinds

    console = make_console()
    if kinds:
        table = Table("kind", "parameters", "saved rank", "what it trains", "paper", title="training kinds", title_justify="left")
        for k in all_kinds():
            params = ", ".join(f"{n}={f.default}" for n, f in k.params.model_fields.items())
            table.add_row(k.name, params, k.saved_rank, k.description, k.paper or "")
        console.print(table)
        return
    if config is None or out is None:
        raise InvalidInputError("give a config and --out (or --kinds to list the training kinds)")
    _train(config, out, dry_run=dry_run, force=force, console=console)


def _train(config: Path, out: Path, *, dry_run: bool, force: bool, console: Console) -> None:
    from eigenmix.data import load_tasks
    from eigenmix.harness.train_config import load_train_config
    from eigenmix.io.atomic import destination
    from eigenmix.io.heads import HEAD_META
    from eigenmix.io.peft_lora import read_lora_adapter
    from eigenmix.kinds import get_kind
    from eigenmix.train.module import train_module

    cfg = load_train_config(config)
    dest = destination(out, overwrite=force, inputs=[config, *cfg.inputs()], marker=HEAD_META)
    (task,) = load_tasks(cfg.data_dir, names=[cfg.task])
    library = [read_lora_adapter(p) for p in cfg.library]
    kind, recipe = get_kind(cfg.kind), cfg.module_recipe()
    params = kind.parse_params(cfg.params).model_dump()
    console.print(f"plan: train a '{kind.name}' module ({', '.join(f'{k}={v}' for k, v in params.items())}) on {task.name} "
                  f"({len(task.train)} rows, {task.num_labels} classes) for {recipe.steps} steps → {out}")  # fmt: skip
    if library:
        console.print(f"orthogonal to {len(library)} modules: {', '.join(m.name for m in library)}")
    if dry_run:
        console.print("dry run: config, inputs and --out are valid; nothing written")
        return
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("train", total=recipe.steps, note="")
        done = train_module(task, recipe, dest, library=library, base_model=cfg.base_model,
                            on_step=lambda _, loss: bar.update(job, advance=1, note=f"loss {loss:.4f}"))  # fmt: skip
    console.print(f"{int(done['trained_parameters']):,} trained parameters; final loss {done['final_loss']:.4f}; "
                  f"{done['train_seconds']:.1f} s → {out}/ (PEFT adapter, head.safetensors, head.json)")  # fmt: skip
