"""The ``eigenmix`` Typer application: one subcommand per file of this package."""

from __future__ import annotations

import typer

from eigenmix import __version__
from eigenmix.cli.bench_cmd import app as bench_app
from eigenmix.cli.bridge_cmd import app as bridge_app
from eigenmix.cli.demo import demo
from eigenmix.cli.explain_cmd import explain
from eigenmix.cli.inspect_cmd import inspect, overlap
from eigenmix.cli.library_cmd import app as library_app
from eigenmix.cli.merge_cmd import merge, methods
from eigenmix.cli.route_cmd import route
from eigenmix.cli.train_cmd import train
from eigenmix.cli.tune_cmd import tune

app = typer.Typer(
    name="eigenmix",
    help="Compose LoRA adapters and fine-tunes in their spectral bases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"eigenmix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Compose LoRA adapters and fine-tunes in their spectral bases."""


app.command()(inspect)
app.command()(overlap)
app.command()(demo)
app.command()(merge)
app.command()(methods)
app.command()(tune)
app.command()(train)
app.command()(route)
app.command()(explain)
app.add_typer(library_app, name="library")
app.add_typer(bench_app, name="bench")
app.add_typer(bridge_app, name="bridge")
