"""Trained adapters and probe heads, cached on disk under a hash of (data, recipe, seed).

A cache entry is a folder named ``{task}-{key}``, written atomically, so a present entry
is complete. The key covers everything that decides the trained weights: the training
rows, the label names, the recipe (seed included), the base model and ``CACHE_VERSION``
(bumped whenever the training code changes what it produces).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from eigenmix.data import Example, Task
from eigenmix.data.images import ImageExample

CACHE_VERSION = "2"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/eigenmix`` (``~/.cache/eigenmix``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eigenmix"


def cache_key(task: Task, kind: str, settings: dict) -> str:
    """A 16-hex-digit key of the rows of ``task.train``, its labels and ``settings``."""
    digest = hashlib.sha256()
    header = {"version": CACHE_VERSION, "kind": kind, "labels": list(task.label_names), "settings": settings}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for row in task.train:
        digest.update(_row_bytes(row) + b"\n")
    return digest.hexdigest()[:16]


def _row_bytes(row: Example | ImageExample) -> bytes:
    """A row as bytes: a text row's JSON; an image's shape, pixels and label."""
    if isinstance(row, ImageExample):
        return f"{tuple(row.image.shape)}:{row.label}:".encode() + row.image.contiguous().numpy().tobytes()
    return row.model_dump_json().encode()


def entry(cache_dir: Path, kind: str, task: Task, settings: dict) -> Path:
    """The cache folder of one trained artefact (it may not exist yet)."""
    return cache_dir / kind / f"{task.name}-{cache_key(task, kind, settings)}"
