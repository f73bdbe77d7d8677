"""Text-classification tasks in the bundled JSONL format.

A task is a folder with ``train.jsonl`` and ``test.jsonl``; each line is
``{"text": str, "label": int}`` with an optional ``"text_pair": str``. A data folder holds
task folders and, optionally, a ``tasks.json`` with ``{"tasks": {name: {"label_names":
[...]}}}``; without it the classes are ``0 … max(train label)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from eigenmix.errors import InvalidInputError

SPLITS = ("train", "test")


class Example(BaseModel):
    """One labelled row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: StrictStr
    text_pair: StrictStr | None = None
    label: StrictInt = Field(ge=0)


RowT = TypeVar("RowT")  # a task's row: Example (text), ImageExample (images)


@dataclass(frozen=True)
class Task(Generic[RowT]):
    """One task's splits and label names; its rows are text :class:`Example` s, or
    :class:`~eigenmix.data.images.ImageExample` s for an image task."""

    name: str
    train: tuple[RowT, ...]
    test: tuple[RowT, ...]
    label_names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return any(getattr(e, "text_pair", None) is not None for e in self.train)


def bundled_data_dir() -> Path:
    """The folder of the 8 tasks shipped with the package."""
    return Path(str(files("eigenmix.data") / "tasks"))


def _read_split(path: Path) -> list[Example]:
    if not path.is_file():
        raise InvalidInputError(f"{path.parent}: missing split {path.name}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(Example.model_validate_json(line))
            except ValidationError as err:
                first = err.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "row"
                if first["type"] == "extra_forbidden":
                    msg = f"unknown field '{field}' (allowed: text, text_pair, label)"
                elif first["type"] == "missing":
                    msg = f"missing field '{field}'"
                elif first["type"] == "json_invalid":
                    msg = "not valid JSON"
                else:
                    msg = f"field '{field}': {first['msg']}"
                raise InvalidInputError(f"{path}:{number}: {msg}") from None
    if not rows:
        raise InvalidInputError(f"{path}: is empty")
    return rows


def _label_names(data_dir: Path, name: str) -> tuple[str, ...] | None:
    meta = data_dir / "tasks.json"
    if not meta.is_file():
        return None
    try:
        names = json.loads(meta.read_text())["tasks"][name]["label_names"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    return tuple(str(n) for n in names)


def load_task(folder: Path | str, label_names: tuple[str, ...] | None = None) -> Task[Example]:
    """Load and check one task folder.

    Raises:
        InvalidInputError: missing folder or split, empty file, bad JSON, unknown or
            missing field, or a label outside the task's classes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: no such task folder")
    splits = {split: _read_split(folder / f"{split}.jsonl") for split in SPLITS}
    names = label_names or _label_names(folder.parent, folder.name)
    if names is None:
        names = tuple(str(k) for k in range(max(e.label for e in splits["train"]) + 1))
    for split, rows in splits.items():
        for number, e in enumerate(rows, start=1):
            if e.label >= len(names):
                raise InvalidInputError(
                    f"{folder / (split + '.jsonl')}:{number}: label {e.label} is out of range "
                    f"for {len(names)} classes (0..{len(names) - 1})"
                )
    return Task(folder.name, tuple(splits["train"]), tuple(splits["test"]), names)


def task_names(data_dir: Path | str | None = None) -> list[str]:
    """Task folders of a data folder: those listed in ``tasks.json`` first, in its order."""
    data_dir = Path(data_dir) if data_dir is not None else bundled_data_dir()
    if not data_dir.is_dir():
        raise InvalidInputError(f"{data_dir}: no such data folder")
    found = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    listed: list[str] = []
    if (data_dir / "tasks.json").is_file():
        try:
            listed = [t for t in json.loads((data_dir / "tasks.json").read_text()).get("tasks", {}) if t in found]
        except (json.JSONDecodeError, AttributeError):
            listed = []
    return listed + [t for t in found if t not in listed]


def load_tasks(data_dir: Path | str | None = None, names: list[str] | None = None) -> list[Task[Example]]:
    """Load several tasks (default: every task of the bundled data)."""
    data_dir = Path(data_dir) if data_dir is not None else bundled_data_dir()
    available = task_names(data_dir)
    wanted = names or available
    for name in wanted:
        if name not in available:
            raise InvalidInputError(f"{data_dir}: no task '{name}' (available: {', '.join(available)})")
    return [load_task(data_dir / name) for name in wanted]
