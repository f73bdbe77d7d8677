"""A library on disk: ``library.json`` and ``modules/<name>.safetensors``, written atomically.

``library.json`` holds ``{"format": "eigenmix-library", "version": 1, "base_model": …,
"modules": [{"name", "file", "source", "layers"}…]}``; each module file holds, per layer,
``<layer>.U`` (m, r), ``<layer>.S`` (r,), ``<layer>.V`` (n, r), and its router statistics as
``stat.<layer>.<name>``, and its task's head (if any) as ``head.weight``/``head.bias`` (class
names in ``library.json``). Reading checks everything and raises one
:class:`~eigenmix.errors.InvalidInputError` line for a missing, truncated or inconsistent
library. Saving writes the whole folder atomically; :func:`add_to_folder` and
:func:`remove_from_folder` change one module of a saved library and rewrite
``library.json`` by an atomic replace, so a failure leaves the library as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from eigenmix.compose.library import Entry, Library
from eigenmix.errors import InvalidInputError
from eigenmix.io.atomic import Destination, atomic_dir, atomic_file
from eigenmix.io.json_file import read_json_object
from eigenmix.io.safetensors_io import read_safetensors
from eigenmix.spectral import SVD

INDEX = "library.json"
FORMAT, VERSION = "eigenmix-library", 1


def _tensors(entry: Entry) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for layer, f in entry.layers.items():
        out[f"{layer}.U"], out[f"{layer}.S"], out[f"{layer}.V"] = f.U.contiguous(), f.S.contiguous(), f.V.contiguous()
    out.update({f"stat.{key}": t.contiguous() for key, t in entry.stats.items()})
    out.update({f"head.{key}": t.contiguous() for key, t in entry.head.items()})
    return out


def _index(library: Library) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "base_model": library.base_model,
        "modules": [
            {"name": e.name, "file": f"modules/{e.name}.safetensors", "source": e.source, "layers": len(e.layers), "labels": e.labels}
            for e in library
        ],
    }


def write_module(entry: Entry, path: Path) -> None:
    save_file(_tensors(entry), str(path), metadata={"format": FORMAT, "name": entry.name})


def save_library(library: Library, dest: Destination) -> None:
    """Write ``library`` as a folder at ``dest`` (atomically)."""
    with atomic_dir(dest) as tmp:
        (tmp / "modules").mkdir()
        for entry in library:
            write_module(entry, tmp / "modules" / f"{entry.name}.safetensors")
        (tmp / INDEX).write_text(json.dumps(_index(library), indent=2) + "\n")


def read_index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: no such library folder")
    index = read_json_object(path, f"{folder}: not a library (no {INDEX})")
    if index.get("format") != FORMAT:
        raise InvalidInputError(f"{path}: not an eigenmix library index")
    if index.get("version") != VERSION:
        raise InvalidInputError(f"{path}: library version {index.get('version')!r}; this eigenmix reads version {VERSION}")
    if not isinstance(index.get("modules"), list):
        raise InvalidInputError(f"{path}: 'modules' must be a list")
    return index


def _read_entry(folder: Path, item: Any) -> Entry:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("file"), str):
        raise InvalidInputError(f"{folder / INDEX}: a module entry needs 'name' and 'file'")
    path = (folder / item["file"]).resolve()
    if folder.resolve() not in path.parents:
        raise InvalidInputError(f"{folder / INDEX}: module file {item['file']} lies outside the library")
    tensors = read_safetensors(path)
    layers: dict[str, SVD] = {}
    stats = {key.removeprefix("stat."): t for key, t in tensors.items() if key.startswith("stat.")}
    head = {key.removeprefix("head."): t for key, t in tensors.items() if key.startswith("head.")}
    if head and (set(head) != {"weight", "bias"} or head["weight"].ndim != 2 or head["bias"].shape != head["weight"].shape[:1]):
        raise InvalidInputError(f"{path}: its head is not a linear head (weight (classes, hidden), bias (classes,))")
    labels = item.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise InvalidInputError(f"{folder / INDEX}: module '{item['name']}': 'labels' must be a list of names")
    for key in tensors:
        if key.startswith(("stat.", "head.")) or not key.endswith(".U"):
            continue
        layer = key.removesuffix(".U")
        try:
            U, S, V = tensors[f"{layer}.U"], tensors[f"{layer}.S"], tensors[f"{layer}.V"]
        except KeyError as err:
            raise InvalidInputError(f"{path}: layer '{layer}' lacks {err.args[0]}") from None
        if U.ndim != 2 or V.ndim != 2 or S.ndim != 1 or not (U.shape[1] == V.shape[1] == S.shape[0]):
            raise InvalidInputError(f"{path}: layer '{layer}' has U {tuple(U.shape)}, S {tuple(S.shape)}, V {tuple(V.shape)}")
        layers[layer] = SVD(U, S, V)
    if len(layers) != item.get("layers", len(layers)):
        raise InvalidInputError(f"{path}: holds {len(layers)} layers; {INDEX} says {item.get('layers')}")
    return Entry(item["name"], layers, item.get("source"), stats, head, tuple(labels) if labels is not None else None)


def load_library(folder: Path | str) -> Library:
    """Read a saved library (every file checked: one clear line for what is wrong)."""
    folder = Path(folder)
    index = read_index(folder)
    library = Library(index.get("base_model"))
    for item in index["modules"]:
        entry = _read_entry(folder, item)
        known = library.shapes()
        for layer, shape in entry.shapes.items():
            if layer in known and known[layer] != shape:
                raise InvalidInputError(f"{folder}: module '{entry.name}' layer '{layer}' has shape {shape}, others {known[layer]}")
        library.add_entry(entry)
    return library


def _write_index(folder: Path, library: Library) -> None:
    """Replace ``library.json`` atomically (a temporary file beside it, then ``os.replace``)."""
    handle, name = tempfile.mkstemp(prefix=f".{INDEX}.tmp-", dir=folder)
    os.close(handle)
    tmp = Path(name)
    try:
        tmp.write_text(json.dumps(_index(library), indent=2) + "\n")
        os.replace(tmp, folder / INDEX)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def add_to_folder(folder: Path, library: Library, entry: Entry) -> None:
    """Write one new module into a saved library (its file first, then the index)."""
    path = folder / "modules" / f"{entry.name}.safetensors"
    with atomic_file(Destination(path.resolve(), folder=False)) as tmp:
        write_module(entry, tmp)
    try:
        _write_index(folder, library)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def remove_from_folder(folder: Path, library: Library, entry: Entry) -> None:
    """Drop one module from a saved library (the index first, then its file)."""
    _write_index(folder, library)
    (folder / "modules" / f"{entry.name}.safetensors").unlink(missing_ok=True)
