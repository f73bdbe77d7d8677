"""``eigenmix library build|add|remove|list``: a library of modules for runtime composition.

A failed ``add`` or ``remove`` leaves the library on disk exactly as it was: everything is
checked and computed first, then one module file and the index are written atomically."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from eigenmix.cli.console import make_console
from eigenmix.cli.options import FORCE_HELP
from eigenmix.compose import Library
from eigenmix.errors import InvalidInputError

app = typer.Typer(help="A library of modules (LoRA adapters) for runtime composition.", no_args_is_help=True)

ROWS_HELP = (
    "NAME=FILE: 16-64 unlabeled rows of module NAME's task (JSONL text; for an image model a folder of PNGs with "
    "labels.csv or an IDX images file; the first 512 are used); kept as its statistics (routers 'spectral --calibration stats' "
    "and 'learned')."
)
BASE_HELP = (
    "The base model (default: the one the adapters name; all-MiniLM-L6-v2 and efficientnet-lite0 are bundled). Needed with --rows only."
)


def _load_rows(library: Library, rows: dict[str, Path], base_model: Path | None) -> None:
    from eigenmix.harness.library_run import load_base, with_statistics

    unknown = [n for n in rows if n not in library]
    if unknown:
        raise InvalidInputError(f"--rows: the library has no module '{unknown[0]}' (it has: {', '.join(library.names)})")
    if rows:
        encoder = load_base(library, base_model)
        for name, path in rows.items():
            with_statistics(library, name, encoder, path)


@app.command("build")
def build(
    adapters: list[str] = typer.Argument(..., help="PEFT LoRA adapter folders, each PATH or NAME=PATH (default name: the folder's)."),
    out: Path = typer.Option(..., "--out", help="The library folder to write (atomically)."),
    rows: list[str] = typer.Option([], "--rows", help=ROWS_HELP),
    base_model: Path | None = typer.Option(None, "--base-model", help=BASE_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Build a library from adapter folders: each module in its spectral form, with its head."""
    from eigenmix.compose import Library, save_library
    from eigenmix.harness.library_run import add_adapter, module_spec, rows_spec
    from eigenmix.io.atomic import destination

    specs = [module_spec(a) for a in adapters]
    files = rows_spec(rows)
    dest = destination(out, overwrite=force, inputs=[p for _, p in specs] + list(files.values()), marker="library.json")
    library = Library()
    for name, path in specs:
        add_adapter(library, path, name)
    _load_rows(library, files, base_model)
    save_library(library, dest)
    make_console().print(library_table(library, f"library {out}: {len(library)} modules"))


@app.command("add")
def add(
    library_dir: Path = typer.Argument(..., help="A library folder (eigenmix library build)."),
    adapter: str = typer.Argument(..., help="A PEFT LoRA adapter folder, PATH or NAME=PATH."),
    rows: Path | None = typer.Option(None, "--rows", help="FILE.jsonl: 16-64 unlabeled rows of its task, kept as its statistics."),
    base_model: Path | None = typer.Option(None, "--base-model", help=BASE_HELP),
) -> None:
    """Add one module (the others are not touched)."""
    from eigenmix.compose import load_library
    from eigenmix.compose.storage import add_to_folder
    from eigenmix.harness.library_run import add_adapter, module_spec

    library = load_library(library_dir)
    name, path = module_spec(adapter)
    if path.resolve() == library_dir.resolve() or library_dir.resolve() in path.resolve().parents:
        raise InvalidInputError(f"{path}: lies inside the library; give an adapter folder")
    entry = add_adapter(library, path, name)
    if rows is not None:
        _load_rows(library, {entry.name: rows}, base_model)
    add_to_folder(library_dir, library, library.entry(entry.name))
    make_console().print(f"added '{entry.name}' ({len(entry.layers)} layers); the library has {len(library)} modules")


@app.command("remove")
def remove(
    library_dir: Path = typer.Argument(..., help="A library folder."),
    name: str = typer.Argument(..., help="The module to remove."),
) -> None:
    """Remove one module (the others are not touched)."""
    from eigenmix.compose import load_library
    from eigenmix.compose.storage import remove_from_folder

    library = load_library(library_dir)
    entry = library.remove(name)
    remove_from_folder(library_dir, library, entry)
    make_console().print(f"removed '{name}'; the library has {len(library)} modules")


@app.command("list")
def list_(library_dir: Path = typer.Argument(..., help="A library folder.")) -> None:
    """List the modules: layers, ranks, head, statistics, source."""
    from eigenmix.compose import load_library

    library = load_library(library_dir)
    make_console().print(
        library_table(library, f"library {library_dir}: {len(library)} modules of {library.base_model or 'an unnamed base model'}")
    )


def library_table(library: Library, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("module", "layers", "ranks", "head", "statistics", "source"):
        table.add_column(column)
    for e in library:
        ranks = sorted({int(f.S.shape[0]) for f in e.layers.values()})
        rank = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
        head = ", ".join(e.labels) if e.labels else (f"{e.head['weight'].shape[0]} classes" if e.head else "-")
        stats = "yes" if any(k.endswith(".mean") for k in e.stats) else "-"
        table.add_row(e.name, str(len(e.layers)), rank, head, stats, e.source or "-")
    return table
