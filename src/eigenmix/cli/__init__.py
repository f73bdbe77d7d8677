"""The ``eigenmix`` console script.

User mistakes raise :class:`eigenmix.errors.EigenmixError`; :func:`main` prints them as
one line on stderr and exits with code 2, as it does for mistakes on the command line
itself (an unknown option, a missing argument). Failures of the operating system (a full
disk, a read-only folder) are one line naming the path and the cause, exit code 1.
Ctrl-C, SIGTERM and SIGHUP become an exception in the running command, so its temporary
output is removed, and one line (exit code 128 + the signal's number). The handlers are
set before anything heavy is imported, so a signal during start-up is one line too.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def main() -> None:
    """Entry point of the console script. (Its signal handlers stay set until the process
    exits; callers that run it in-process restore their own.)"""
    _received.clear()
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)
    _run()


def _run() -> None:
    from eigenmix.errors import EigenmixError

    try:
        from eigenmix.cli.app import app

        code = app(standalone_mode=False)
    except EigenmixError as err:
        _exit_if_interrupted()
        _say(f"error: {err}")
        sys.exit(2)
    except OSError as err:
        _exit_if_interrupted()
        where = f"{err.filename}: " if err.filename else ""
        _say(f"error: {where}{err.strerror or err}")
        sys.exit(1)
    except SystemExit:
        _exit_if_interrupted()
        raise
    except BaseException as err:
        _exit_if_interrupted()
        if _usage_error(err):
            sys.exit(err.exit_code)  # type: ignore[attr-defined]
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(err: BaseException) -> bool:
    """A mistake on the command line (Click's ``UsageError`` family, which Typer vendors):
    one line, with where to find the usage; a bare ``eigenmix`` shows the help."""
    if not (hasattr(err, "exit_code") and hasattr(err, "format_message")):
        return False
    if type(err).__name__ == "NoArgsIsHelpError":
        err.show()  # type: ignore[attr-defined]
        return True
    ctx: Any = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else "eigenmix"
    _say(f"error: {err.format_message()} (see `{command} --help`)")
    return True


def _exit_if_interrupted() -> None:
    """After a signal, whatever exception it became (a library may wrap it), one line; the
    signals are then ignored so that nothing interrupts the exit."""
    if _received:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signum = _received[0]
        _say(f"interrupted ({signal.Signals(signum).name}); nothing was written")
        sys.exit(128 + signum)
