"""A merged full model written as it is merged: ``W_base + ΔW`` for each merged layer the
moment the merge yields it, every other base tensor copied one at a time, into safetensors
shards in the base model's layout with a ``model.safetensors.index.json`` (as
``transformers`` saves sharded models, and mergekit's ``--out-shard-size``). Memory holds
one tensor of the output at a time, whatever the model size.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from eigenmix.errors import InvalidInputError
from eigenmix.io.safetensors_io import CheckpointReader
from eigenmix.io.stream_writer import StreamWriter
from eigenmix.modules import AnyDelta

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD = 5_000_000_000  # parameters per shard: mergekit's default ``--out-shard-size 5B``
OUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def parse_shard_size(value: str | int) -> int:
    """Parameters per shard: an int, or mergekit's form (``"5B"``, ``"500M"``, ``"100K"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise InvalidInputError(f"shard size {value}: must be at least 1")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMB]?)\s*", str(value), re.IGNORECASE)
    if match is None:
        raise InvalidInputError(f"shard size '{value}': give a number of parameters per shard, such as 5B, 500M or 100000")
    size = int(float(match.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}[match.group(2).upper()])
    if size < 1:
        raise InvalidInputError(f"shard size '{value}': must be at least 1 parameter")
    return size


def find_base_tensor(layer: str, names: set[str], by_suffix: dict[str, str]) -> str | None:
    """The base tensor a layer updates: ``{layer}.weight`` (adapters) or ``{layer}`` (task
    vectors), allowing one leading component of difference (``bert.encoder.…`` vs
    ``encoder.…``)."""
    for candidate in (f"{layer}.weight", layer):
        if candidate in names:
            return candidate
        if "." in candidate and candidate.split(".", 1)[1] in names:
            return candidate.split(".", 1)[1]
        if candidate in by_suffix:
            return by_suffix[candidate]
    return None


def base_targets(shapes: Mapping[str, tuple[int, ...]], reader: CheckpointReader) -> dict[str, str]:
    """Map every merged layer (``shapes``: layer → delta shape) to the base tensor it
    updates, checked (a transposed shape is a ``fan_in_fan_out`` layer)."""
    names = set(reader.keys())
    by_suffix = {n.split(".", 1)[1]: n for n in names if "." in n}
    out = {}
    for layer, shape in shapes.items():
        target = find_base_tensor(layer, names, by_suffix)
        if target is None:
            raise InvalidInputError(f"{reader.path}: the base model has no tensor for layer '{layer}'")
        if reader.shape(target) not in (tuple(shape), tuple(shape)[::-1]):
            raise InvalidInputError(
                f"{reader.path}: tensor '{target}' has shape {reader.shape(target)} but the merged layer '{layer}' has {tuple(shape)}"
            )
        out[layer] = target
    return out


def plan_shards(shapes: Mapping[str, tuple[int, ...]], shard_size: int) -> list[list[str]]:
    """Tensor names, in order, cut into shards of at most ``shard_size`` parameters (a
    larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    count = 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        if shards[-1] and count + n > shard_size:
            shards.append([])
            count = 0
        shards[-1].append(name)
        count += n
    return shards


def shard_names(count: int) -> list[str]:
    return ["model.safetensors"] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def stream_full_model(
    merged: Iterable[tuple[str, AnyDelta]],
    shapes: Mapping[str, tuple[int, ...]],
    base: Path | CheckpointReader,
    folder: Path,
    *,
    shard_size: int = DEFAULT_SHARD,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Write ``W_base + ΔW`` for every layer ``merged`` yields (``shapes``: every layer it
    will yield, checked against the base first), and every other base tensor unchanged, into
    ``folder``; the base folder's other files (config, tokenizer) are copied.

    Sums are taken in float32 (float64 for float64 weights) and written in the base tensor's
    dtype, or ``dtype`` for floating tensors. ``base`` may be a reader the merge's task
    vectors share (opened with ``keep_last``: the layer they just read is not read again);
    it stays open. Returns the layers written.
    """
    reader = base if isinstance(base, CheckpointReader) else CheckpointReader(base)
    owned = reader is not base
    try:
        targets = base_targets(shapes, reader)
        by_tensor = {t: layer for layer, t in targets.items()}
        shards = plan_shards({name: reader.shape(name) for name in reader.keys()}, shard_size)  # noqa: SIM118 - a reader
        files = shard_names(len(shards))
        where = {name: i for i, names in enumerate(shards) for name in names}
        writers = [StreamWriter(folder / f, names, metadata={"format": "pt"}) for f, names in zip(files, shards, strict=True)]
        try:
            done: set[str] = set()
            for layer, delta in merged:
                if layer not in targets:
                    raise InvalidInputError(f"the merge yielded layer '{layer}', which was not planned")
                name = targets[layer]
                W = reader.get(name)  # possibly the shared reader's kept tensor: not modified
                step = torch.float64 if W.dtype == torch.float64 else torch.float32
                d = delta.tensor()  # a conv kernel in its own shape
                if d.shape != W.shape:  # fan_in_fan_out: the base stores (in, out)
                    d = d.T
                writers[where[name]].add(name, W.to(step, copy=True).add_(d).to(_out(W.dtype, dtype)))
                del d, delta
                done.add(name)
            missing = sorted(set(by_tensor) - done)
            if missing:
                raise InvalidInputError(f"the merge did not yield layer '{by_tensor[missing[0]]}'")
            for name in reader.keys():  # noqa: SIM118
                if name not in done:
                    W = reader.get(name)
                    writers[where[name]].add(name, W.to(_out(W.dtype, dtype)))
            for w in writers:
                w.close()
        except BaseException:
            for w in writers:
                w.abort()
            raise
        if len(files) > 1:
            total = sum((folder / f).stat().st_size for f in files)
            index = {"metadata": {"total_size": total}, "weight_map": {n: files[where[n]] for n in reader.keys()}}  # noqa: SIM118
            (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    finally:
        if owned:
            reader.close()
    copy_side_files(reader.path, folder)
    return list(targets)


def _out(stored: torch.dtype, asked: torch.dtype | None) -> torch.dtype:
    return asked if asked is not None and stored.is_floating_point else stored


def copy_side_files(base: Path, folder: Path) -> None:
    """The base folder's config, tokenizer and config-only folders (sentence-transformers'
    ``1_Pooling/``), so the result loads like the base model."""
    if not base.is_dir():
        return
    for item in base.iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_FILES) and item.name != INDEX:
            shutil.copy2(item, folder / item.name)
        elif item.is_dir() and not item.name.startswith(".") and not any(p.name.endswith(WEIGHT_FILES) for p in item.rglob("*")):
            shutil.copytree(item, folder / item.name)
