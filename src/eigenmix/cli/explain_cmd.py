"""``eigenmix explain``: which direction of which module changed each layer, per input, as
``explain.json`` and a self-contained ``report.html``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eigenmix.cli.console import make_console
from eigenmix.cli.options import BATCH_SIZE, FORCE_HELP, IMAGE_SIZE, MAX_LENGTH

REPORT = "explain.json"


def explain(
    target: Path = typer.Argument(
        ..., help="A merged or tuned adapter folder (its report names its modules), a library folder, or one adapter."
    ),
    inputs: Path = typer.Option(
        ...,
        "--inputs",
        help='Text: a JSONL file of probe rows {"text": …} (and "text_pair", and a group field such as "task"). Images: a folder '
        "of PNGs with labels.csv, or an IDX images file (their labels are the groups).",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: explain.json and report.html."),
    group_field: str = typer.Option(
        "task", "--group-field", help="The rows' field that groups them (the task × module matrix); rows without it form one group."
    ),
    text_field: str = typer.Option("text", "--text-field", help="The rows' text field."),
    router: str | None = typer.Option(None, "--router", help="A library only: spectral (default), arrow, learned or uniform, as route."),
    base_model: Path | None = typer.Option(
        None, "--base-model", help="The base model folder (default: the one the target names; all-MiniLM-L6-v2 is bundled)."
    ),
    batch_size: int = BATCH_SIZE,
    max_length: int = MAX_LENGTH,
    image_size: int = IMAGE_SIZE,
    top: int = typer.Option(5, "--top", min=1, help="Directions listed per module."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Explain a merge, a tuned composition or a routed library: which directions of which module contribute what, per input."""
    from eigenmix.compose.routers.registry import DEFAULT
    from eigenmix.errors import InvalidInputError
    from eigenmix.explain.report import report_html
    from eigenmix.harness.backbones import read_rows
    from eigenmix.harness.explain_run import base_for, explain_rows, load_target
    from eigenmix.harness.library_run import ROUTERS, make_router
    from eigenmix.io.atomic import atomic_dir, destination

    if router is not None and router not in ROUTERS:
        raise InvalidInputError(f"--router '{router}': choose from {', '.join(ROUTERS)}")
    dest = destination(out, overwrite=force, inputs=[target, inputs], marker=REPORT)
    chosen = load_target(target)
    if router is not None and chosen.kind != "library":
        raise InvalidInputError(f"--router: {target} is a {chosen.kind} adapter, not a library; only a library is routed")
    encoder = base_for(chosen, base_model, max_length, image_size)
    rows = read_rows(inputs, encoder, text_field=text_field, group_field=group_field)
    routing = make_router(router or DEFAULT, chosen.library, encoder) if chosen.kind == "library" else None
    console = make_console()
    columns = (TextColumn("explaining"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    extra = {"inputs_file": str(inputs), "router": (router or DEFAULT) if routing is not None else None}
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("explain", total=len(rows))
        ex = explain_rows(chosen, encoder, rows, router=routing, batch_size=batch_size, extra=extra,
                          on_batch=lambda n: bar.update(job, advance=n))  # fmt: skip
    document = ex.to_json(top=top)
    page = report_html(ex)
    with atomic_dir(dest) as tmp:
        (tmp / REPORT).write_text(json.dumps(document, indent=1) + "\n")
        (tmp / "report.html").write_text(page, encoding="utf-8")
    shares = ", ".join(f"{p} {float(v):.2f}" for p, v in zip(ex.parts, ex.row_shares().mean(0), strict=True))
    console.print(f"{len(rows)} rows explained over {len(ex.layers)} layers → {out}/report.html; mean share per input: {shares}")
