"""What ``eigenmix library`` and ``eigenmix route`` do with inputs: modules read from adapter
folders (with the head and class names ``eigenmix.train`` and ``eigenmix.vision`` save beside
them), their statistics from a few unlabeled rows of their task, routers by name, and a
routed pass over rows (text or images, as the base model takes) with per-row coefficients
and predictions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eigenmix.compose import Entry, Library, RoutedModel, Router
from eigenmix.compose.router_stats import module_statistics
from eigenmix.compose.routers.registry import Stream, get_router, router_names
from eigenmix.data.images import ImageRow
from eigenmix.errors import InvalidInputError
from eigenmix.harness.backbones import IMAGE_SIZE, Backbone, Row, load_backbone, read_rows
from eigenmix.io import read_lora_adapter
from eigenmix.io.heads import HEAD_FILE, has_head, head_meta
from eigenmix.io.safetensors_io import read_safetensors

ROUTERS = router_names()  # the default first


def module_spec(raw: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` or ``PATH``."""
    name, sep, path = raw.partition("=")
    return (name, Path(path).expanduser()) if sep and name and "/" not in name else (None, Path(raw).expanduser())


def rows_spec(raw: list[str]) -> dict[str, Path]:
    """``NAME=FILE`` each (the rows of module NAME's task: JSONL text, or images)."""
    out: dict[str, Path] = {}
    for item in raw:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InvalidInputError(f"--rows '{item}': give NAME=FILE (the unlabeled rows of module NAME's task)")
        if name in out:
            raise InvalidInputError(f"--rows: module '{name}' is given twice")
        out[name] = Path(path).expanduser()
    return out


def add_adapter(library: Library, folder: Path, name: str | None = None) -> Entry:
    """Read one adapter folder (and the head beside it) into ``library``."""
    module = read_lora_adapter(folder, name=name)
    head, labels = {}, None
    if has_head(folder):
        tensors = read_safetensors(folder / HEAD_FILE)
        if set(tensors) != {"weight", "bias"} or tensors["weight"].ndim != 2 or tensors["bias"].shape != tensors["weight"].shape[:1]:
            raise InvalidInputError(f"{folder / HEAD_FILE}: not a linear head (weight (classes, hidden), bias (classes,))")
        names = head_meta(folder).get("label_names")
        labels = tuple(str(n) for n in names) if isinstance(names, list) and len(names) == tensors["weight"].shape[0] else None
        head = tensors
    return library.add(module, name or module.name, head=head, labels=labels)


def load_base(library: Library, base_model: Path | None, max_length: int = 128, image_size: int = IMAGE_SIZE) -> Backbone:
    """The library's base model (or ``base_model``), loaded offline with its input kind."""
    where = base_model if base_model is not None else library.base_model
    if where is None:
        raise InvalidInputError("the library does not name its base model; give --base-model")
    return load_backbone(where, max_length=max_length, image_size=image_size)


STAT_ROWS = 512  # the rows of a --rows file a module's statistics use (one forward pass): the first ones


def with_statistics(library: Library, name: str, encoder: Backbone, rows_file: Path) -> Entry:
    """Module ``name`` again, now keeping its statistics from the first :data:`STAT_ROWS` rows
    of ``rows_file`` (a whole IDX file is 10,000 images)."""
    rows = read_rows(rows_file, encoder, limit=STAT_ROWS)
    batch = encoder.batches(rows, len(rows))[0][1]
    stats = module_statistics(encoder.model, library, name, batch)
    entry = dataclasses.replace(library.entry(name), stats=stats)
    library.replace(entry)
    return entry


def make_router(
    name: str,
    library: Library,
    encoder: Backbone,
    *,
    calibration: str | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    level: str | None = None,
    scope: str | None = None,
    stream: Stream | None = None,
) -> Router:
    """The router registered as ``name`` (:mod:`eigenmix.compose.routers.registry`) on
    ``encoder``'s model; a setting left None takes the router's registered default, and one
    the router does not have is ignored (``route`` passes every option to every router).
    ``stream``: the batches of the rows about to be routed (``spectral`` with calibration
    ``stream``)."""
    entry = get_router(name)
    given = {"calibration": calibration, "temperature": temperature, "top_k": top_k, "level": level, "scope": scope}
    settings = {k: v for k, v in given.items() if v is not None and k in entry.params.model_fields}
    return entry.build(library, encoder.model, settings, stream=stream)


@torch.no_grad()
def route_rows(
    library: Library,
    encoder: Backbone,
    router: Router,
    rows: Sequence[Row],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Per row (in file order): its coefficients over the library's modules, the module with
    the largest, and, where that module keeps a head, its prediction."""
    model = RoutedModel(encoder.model, library, router)
    out: list[dict[str, Any]] = [{} for _ in rows]
    try:
        for chunk, batch in encoder.batches(rows, batch_size):
            features = encoder.features(model(**batch), batch)
            weights = model.routing()
            for j, i in enumerate(chunk):
                out[i] = _row(library, rows[i], weights[j], features[j])
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        model.detach_hooks()
    return out


def _row(library: Library, row: Row, weights: Tensor, feature: Tensor) -> dict[str, Any]:
    top = int(weights.argmax())
    entry = list(library)[top]
    result: dict[str, Any] = {
        "line": row.line,
        "module": entry.name,
        "weights": {n: round(float(w), 6) for n, w in zip(library.names, weights, strict=True)},
    }
    if isinstance(row, ImageRow) and row.group is not None:
        result["label"] = row.group  # the image's own label, where its source has one
    if entry.head:
        probs = torch.softmax(feature @ entry.head["weight"].T.to(feature.dtype) + entry.head["bias"].to(feature.dtype), dim=-1)
        label = int(probs.argmax())
        result["prediction"] = entry.labels[label] if entry.labels else label
        result["probability"] = round(float(probs[label]), 6)
    return result
