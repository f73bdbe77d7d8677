"""One place to make the rich console: wide enough for layer names when output is piped."""

from __future__ import annotations

from rich.console import Console


def make_console(*, stderr: bool = False) -> Console:
    """A console that keeps its terminal's width, or 150 columns when not on a terminal."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=150)
    return console
