"""``eigenmix train``: train one module of a training kind (``eigenmix.kinds``) on a
text task, as a YAML config says; ``--kinds`` lists the kinds and their parameters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eigenmix.cli.console import make_console
from eigenmix.cli.options import FORCE_HELP

if TYPE_CHECKING:
    from eigenmix.vision import ImageTask


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
    from eigenmix.vision import train_image_module

    cfg = load_train_config(config)
    dest = destination(out, overwrite=force, inputs=[config, *cfg.inputs()], marker=HEAD_META)
    library = [read_lora_adapter(p) for p in cfg.library]
    kind = get_kind(cfg.kind)
    params = kind.parse_params(cfg.params).model_dump()
    images = image_task_of(cfg.task, cfg.images) if cfg.images is not None else None
    (text,) = load_tasks(cfg.data_dir, names=[cfg.task]) if images is None else (None,)
    if images is not None:
        steps, what, classes = cfg.image_recipe().steps, f"{len(images.train)} images at {cfg.image_recipe().size} px", images.label_names
    else:
        assert text is not None
        steps, what, classes = cfg.text_recipe().steps, f"{len(text.train)} rows", text.label_names
    console.print(f"plan: train a '{kind.name}' module ({', '.join(f'{k}={v}' for k, v in params.items())}) on {cfg.task} "
                  f"({what}, {len(classes)} classes) for {steps} steps → {out}")  # fmt: skip
    if library:
        console.print(f"orthogonal to {len(library)} modules: {', '.join(m.name for m in library)}")
    if dry_run:
        console.print("dry run: config, inputs and --out are valid; nothing written")
        return
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("train", total=steps, note="")

        def on_step(_: int, loss: float) -> None:
            bar.update(job, advance=1, note=f"loss {loss:.4f}")

        if images is not None:
            done = train_image_module(images, cfg.image_recipe(), dest, kind=cfg.kind, params=cfg.params, library=library, on_step=on_step)
        else:
            assert text is not None
            done = train_module(text, cfg.module_recipe(), dest, library=library, base_model=cfg.base_model, on_step=on_step)
    console.print(f"{int(done['trained_parameters']):,} trained parameters; final loss {done['final_loss']:.4f}; "
                  f"{done['train_seconds']:.1f} s → {out}/ (PEFT adapter, head.safetensors, head.json)")  # fmt: skip


def image_task_of(name: str, images: Path) -> ImageTask:
    """The labelled images of an image module as a task (classes: the labels, sorted)."""
    from eigenmix.data.images import ImageExample, image_set, read_image_inputs
    from eigenmix.errors import InvalidInputError
    from eigenmix.vision import ImageTask

    rows = read_image_inputs(images)
    unlabeled = [r.line for r in rows if r.group is None]
    if unlabeled:
        raise InvalidInputError(f"{images}: image {unlabeled[0]} has no label (training reads labelled images)")
    classes = sorted({str(r.group) for r in rows})
    if len(classes) < 2:
        raise InvalidInputError(f"{images}: needs images of at least 2 classes, got {classes}")
    train = image_set([ImageExample(r.image, classes.index(str(r.group))) for r in rows], classes)
    return ImageTask(name, train, train)  # the test split is not read by training
