"""Classification heads that ``eigenmix.train`` saves beside an adapter (``head.safetensors``
with ``head.json``: task, label names, recipe), carried through merges and tuning as
``heads/<module>.safetensors`` plus one ``heads/heads.json``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eigenmix.io.json_file import read_json_object

HEAD_FILE = "head.safetensors"
HEAD_META = "head.json"


def save_head(
    folder: Path, head: Any, task: str, label_names: Sequence[str], recipe: Mapping[str, Any], train_rows: int, seconds: float, loss: float,
    **extra: Any,
) -> None:
    """A trainer's ``head.safetensors`` (``head``'s state) and ``head.json`` (task, label
    names, recipe, rows, seconds, last loss, then ``extra``: an image head's modality and size)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_FILE))
    meta = {"task": task, "label_names": list(label_names), "recipe": dict(recipe), "train_rows": train_rows,
            "train_seconds": round(seconds, 3), "final_loss": loss, **extra}  # fmt: skip
    (folder / HEAD_META).write_text(json.dumps(meta, indent=2) + "\n")


def has_head(folder: Path) -> bool:
    """Whether an adapter folder has a head beside it."""
    return (folder / HEAD_FILE).is_file()


def head_meta(folder: Path) -> dict[str, Any]:
    """``head.json`` of an adapter folder, checked."""
    return read_json_object(folder / HEAD_META, f"{folder}: has {HEAD_FILE} but no {HEAD_META}")


def check_head(folder: Path) -> None:
    """A head beside an adapter that a merge can carry: readable safetensors, finite, and a
    ``head.json`` object."""
    from eigenmix.io.safetensors_io import read_safetensors

    read_safetensors(folder / HEAD_FILE)
    head_meta(folder)


def write_heads(heads: Mapping[str, Path], out: Path, earlier: Path | None = None) -> None:
    """Copy each module's head (byte for byte) into ``out/heads/<name>.safetensors`` and
    their ``head.json`` contents into ``out/heads/heads.json``; with ``earlier`` (a merge
    output being continued), its heads come along first."""
    meta: dict[str, Any] = {}
    index = earlier / "heads" / "heads.json" if earlier is not None else None
    if index is not None and index.is_file():
        meta = read_json_object(index, f"{index}: no such file")
    if not heads and not meta:
        return
    (out / "heads").mkdir()
    for name in meta:
        assert index is not None
        shutil.copyfile(index.parent / f"{name}.safetensors", out / "heads" / f"{name}.safetensors")
    for name, folder in heads.items():
        shutil.copyfile(folder / HEAD_FILE, out / "heads" / f"{name}.safetensors")
    meta |= {name: head_meta(folder) for name, folder in heads.items()}
    (out / "heads" / "heads.json").write_text(json.dumps(meta, indent=2) + "\n")
