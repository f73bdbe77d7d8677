"""The ``eigenmix`` console script.

User mistakes raise :class:`eigenmix.errors.EigenmixError`; :func:`main` prints them as
one line on stderr and exits with code 2 (as Click does for usage errors). Failures of the
operating system (a full disk, a read-only folder) are one line naming the path and the
cause, exit code 1. Ctrl-C, SIGTERM and SIGHUP become an exception in the running command,
so its temporary output is removed, and one line (exit code 128 + the signal's number).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import typer

from eigenmix import __version__
from eigenmix.cli.bench_cmd import app as bench_app
from eigenmix.cli.console import make_console
from eigenmix.cli.demo import demo
from eigenmix.cli.inspect_cmd import inspect, overlap
from eigenmix.cli.merge_cmd import merge, methods
from eigenmix.cli.tune_cmd import tune
from eigenmix.errors import EigenmixError

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
app.add_typer(bench_app, name="bench")


class Interrupted(BaseException):
    """A termination signal (SIGINT, SIGTERM, SIGHUP), raised where the command was running.

    Not an ``Exception``: no ``except Exception`` on the way swallows it, and every
    ``with`` block (temporary outputs) cleans up as it passes."""


_received: list[int] = []


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if not _received:  # a second signal during clean-up must not interrupt the clean-up
        _received.append(signum)
        raise Interrupted(signum)


def _say(message: str) -> None:
    make_console(stderr=True).print(message, highlight=False, soft_wrap=True, markup=False)


def main() -> None:
    """Entry point of the console script (the signal handlers it sets are restored on return,
    for callers that run it in-process)."""
    _received.clear()
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        _run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run() -> None:
    try:
        app()
    except EigenmixError as err:
        _exit_if_interrupted()
        _say(f"error: {err}")
        sys.exit(2)
    except OSError as err:
        _exit_if_interrupted()
        where = f"{err.filename}: " if err.filename else ""
        _say(f"error: {where}{err.strerror or err}")
        sys.exit(1)
    except BaseException:  # SystemExit from the command line parser, or anything a signal turned into
        _exit_if_interrupted()
        raise


def _exit_if_interrupted() -> None:
    """After a signal, whatever exception it became (a library may wrap it), one line."""
    if _received:
        signum = _received[0]
        _say(f"interrupted ({signal.Signals(signum).name}); nothing was written")
        sys.exit(128 + signum)
