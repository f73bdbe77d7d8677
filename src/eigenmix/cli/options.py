"""Command-line options whose help text is the pydantic ``Field(description=...)`` of the
setting they fill: written once, in the model."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import BaseModel


def described(model: type[BaseModel], field: str, default: Any, *flags: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` for ``model.field``, with the field's description as its help."""
    description = model.model_fields[field].description or ""
    return typer.Option(default, *flags, help=description[:1].upper() + description[1:] + ".", **kwargs)


FORCE_HELP = "Replace --out if it is an earlier output of this command."

# The input options of the commands that run a base model over rows (route, explain).
BATCH_SIZE = typer.Option(32, "--batch-size", min=1, help="Rows per forward pass.")
MAX_LENGTH = typer.Option(128, "--max-length", min=1, help="Tokens per row (text).")
IMAGE_SIZE = typer.Option(
    64, "--image-size", min=32, help="Side the images are resized to (images; a multiple of 32: the side the adapters were trained at)."
)
