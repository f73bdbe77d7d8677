"""``eigenmix route``: a library on its base model, mixed per input by a router, over rows of text or images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eigenmix.cli.console import make_console
from eigenmix.cli.options import BATCH_SIZE, FORCE_HELP, IMAGE_SIZE, MAX_LENGTH

REPORT = "route_report.json"


def route(
    library_dir: Path = typer.Argument(..., help="A library folder (eigenmix library build)."),
    inputs: Path = typer.Option(
        ...,
        "--inputs",
        help='Text: a JSONL file of rows {"text": …} (and "text_pair" for pairs). Images: a folder of PNGs with labels.csv '
        "(file,label), or an IDX images file (*-images-idx3-ubyte[.gz], labelled by its *-labels-idx1-ubyte file beside it).",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: routes.jsonl (per row: weights, module, prediction) and route_report.json."
    ),
    router: str = typer.Option("spectral", "--router", help="spectral, arrow, learned (needs --rows at build/add) or uniform."),
    calibration: str = typer.Option(
        "chance", "--calibration", help="spectral only: chance (the adapters alone), stats (the modules' rows), stream (these inputs)."
    ),
    temperature: float | None = typer.Option(
        None, "--temperature", min=1e-6, help="Softmax temperature (default: spectral 0.2, learned 3, arrow 1)."
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", min=1, help="Keep the k largest coefficients (default: spectral and learned all, arrow 3)."
    ),
    level: str = typer.Option("sequence", "--level", help="spectral: route each sequence (its tokens' scores averaged) or each token."),
    scope: str | None = typer.Option(
        None, "--scope", help="spectral, learned: all (default: one decision from every layer's scores, two passes), layer, first."
    ),
    base_model: Path | None = typer.Option(
        None, "--base-model", help="The base model (default: the library's; all-MiniLM-L6-v2 and efficientnet-lite0 are bundled)."
    ),
    batch_size: int = BATCH_SIZE,
    limit: int | None = typer.Option(None, "--limit", min=1, help="Route the first N rows only (default: all)."),
    max_length: int = MAX_LENGTH,
    image_size: int = IMAGE_SIZE,
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Run a routed library over rows of text or images: each row's coefficients, its top module and that module's prediction."""
    from eigenmix.compose import load_library
    from eigenmix.compose.routers import get_router
    from eigenmix.errors import InvalidInputError
    from eigenmix.harness.backbones import read_rows
    from eigenmix.harness.library_run import ROUTERS, load_base, make_router, route_rows
    from eigenmix.io.atomic import atomic_dir, destination

    spectral = get_router("spectral").params.model_fields  # the settings' values: the spectral router's
    values = {key: get_args(spectral[key].annotation) for key in ("calibration", "level", "scope")}
    choices = {"--router": (router, ROUTERS), "--calibration": (calibration, values["calibration"]),
               "--level": (level, values["level"]), "--scope": (scope or "all", values["scope"])}  # fmt: skip
    for flag, (value, allowed) in choices.items():
        if value not in allowed:
            raise InvalidInputError(f"{flag} '{value}': choose from {', '.join(allowed)}")
    dest = destination(out, overwrite=force, inputs=[library_dir, inputs], marker=REPORT)
    library = load_library(library_dir)
    encoder = load_base(library, base_model, max_length, image_size)
    rows = read_rows(inputs, encoder, limit=limit)
    stream = lambda: (batch for _, batch in encoder.batches(rows, batch_size))  # noqa: E731
    chosen = make_router(
        router, library, encoder, calibration=calibration, temperature=temperature, top_k=top_k, level=level, scope=scope, stream=stream
    )
    console = make_console()
    columns = (TextColumn("routing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("route", total=len(rows))
        results = route_rows(library, encoder, chosen, rows, batch_size, on_batch=lambda n: bar.update(job, advance=n))
    counts = {name: sum(r["module"] == name for r in results) for name in library.names}
    report = {
        "format": "eigenmix-route", "library": str(library_dir), "inputs": str(inputs), "rows": len(rows), "router": router,
        "settings": {"calibration": calibration, "temperature": temperature, "top_k": top_k, "level": level, "scope": scope},
        "base_model": encoder.name, "inputs_kind": encoder.kind, **({"image_size": image_size} if encoder.kind == "image" else {}),
        "rows_per_module": counts,
    }  # fmt: skip
    with atomic_dir(dest) as tmp:
        with (tmp / "routes.jsonl").open("w") as fh:
            for r in results:
                fh.write(json.dumps(r) + "\n")
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"{len(rows)} rows routed → {out}/routes.jsonl; rows per top module: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
