"""Checked safetensors reading: one clear error for a missing, corrupt, truncated or
pickle file, and for NaN / Inf values. eigenmix never unpickles."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from eigenmix.errors import InvalidInputError, NonFiniteError
from eigenmix.io.stream_writer import DTYPES

SAFETENSORS_DTYPES = {code: dtype for dtype, code in DTYPES.items()}  # "BF16" → torch.bfloat16
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

CONVERT_HINT = (
    "eigenmix reads safetensors only and never unpickles; convert it once, in an environment you trust: "
    "python -c \"import torch, safetensors.torch as s; s.save_file(torch.load('{src}', weights_only=True), '{dst}')\""
)


def refuse_pickle(path: Path) -> InvalidInputError:
    """The error for a pickle weight file, with a one-line conversion hint."""
    dst = path.with_suffix(".safetensors").name
    return InvalidInputError(f"{path}: is a pickle file; " + CONVERT_HINT.format(src=path.name, dst=dst))


def all_finite(tensor: Tensor) -> bool:
    """No NaN or Inf in a floating tensor, in one pass without a copy or an overflow: NaN
    propagates into the min and the max, and ±Inf is one of them."""
    return tensor.numel() == 0 or all(bool(torch.isfinite(x)) for x in torch.aminmax(tensor.reshape(-1)))


def check_finite(name: str, tensor: Tensor, where: Path | str) -> None:
    """Raise :class:`NonFiniteError` if a floating tensor holds NaN or Inf."""
    if tensor.is_floating_point() and not all_finite(tensor):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(f"{where}: tensor '{name}' holds {n_bad} NaN/Inf value(s)")


def _bad_file(path: Path, err: Exception) -> InvalidInputError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return InvalidInputError(f"{path}: not a readable safetensors file (corrupt or truncated?): {reason}")


def open_safetensors(path: Path) -> Any:
    """Open (memory-map) a safetensors file, checked: one clear error if it is corrupt."""
    if path.suffix in PICKLE_SUFFIXES:
        raise refuse_pickle(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _bad_file(path, err) from err


def read_tensor(handle: Any, name: str, path: Path) -> Tensor:
    """One tensor from an open file, checked for NaN / Inf."""
    try:
        tensor = handle.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _bad_file(path, err) from err
    check_finite(name, tensor, path)
    return tensor


def read_safetensors(path: Path | str) -> dict[str, Tensor]:
    """Read every tensor of one ``.safetensors`` file, checked for NaN / Inf.

    Raises:
        InvalidInputError: missing, pickle, corrupt or truncated file.
        NonFiniteError: a tensor holds NaN or Inf.
    """
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise refuse_pickle(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    tensors: dict[str, Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensors[name] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _bad_file(path, err) from err
    for name, t in tensors.items():
        check_finite(name, t, path)
    return tensors


class _Layout:
    """Where each tensor's bytes lie in one safetensors file (from its header, which
    ``safe_open`` has already validated)."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        self.start = 8 + size
        self.entries = {k: v for k, v in header.items() if k != "__metadata__"}

    def read(self, fh: Any, name: str) -> Tensor:
        """The tensor's bytes read straight into a fresh tensor (no memory map: the pages stay
        in the page cache, not in this process's resident memory)."""
        entry = self.entries[name]
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        out = torch.empty(tuple(entry["shape"]), dtype=dtype)
        if end > begin:
            fh.seek(self.start + begin)
            view = memoryview(out.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
            if fh.readinto(view) != end - begin:
                raise ValueError(f"tensor '{name}' is truncated")
        return out


class CheckpointReader:
    """Lazy, tensor-at-a-time reader of a full checkpoint in safetensors.

    Accepts a ``.safetensors`` file, or a folder holding ``model.safetensors`` or a
    sharded ``model.safetensors.index.json``. Only the header is read up front; each
    :meth:`get` reads one tensor. With ``keep_last`` the last tensor read is kept and
    handed out again (read-only) while the same name is asked for: a base checkpoint
    shared by K fine-tunes and the writer is read once per layer.
    """

    def __init__(self, path: Path | str, *, keep_last: bool = False) -> None:
        self.path = Path(path)
        self._keep_last = keep_last
        self._last: tuple[str, Tensor] | None = None
        self._files = self._resolve(self.path)
        self._stack = ExitStack()
        self._layouts: dict[Path, _Layout] = {}
        self._files_open: dict[Path, Any] = {}
        self._where: dict[str, Path] = {}
        try:
            for file in self._files:
                with safe_open(str(file), framework="pt") as handle:  # validates the header; its order of names
                    names = list(handle.keys())
                self._layouts[file] = _Layout(file)
                self._files_open[file] = self._stack.enter_context(file.open("rb"))
                for name in names:
                    self._where[name] = file
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            self._stack.close()
            raise _bad_file(file, err) from err

    @staticmethod
    def _resolve(path: Path) -> list[Path]:
        if path.suffix in PICKLE_SUFFIXES:
            raise refuse_pickle(path)
        if path.is_file():
            return [path]
        if not path.is_dir():
            raise InvalidInputError(f"{path}: no such checkpoint file or folder")
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise InvalidInputError(f"{index}: not a safetensors index (needs a 'weight_map')") from err
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise InvalidInputError(f"{index}: shard {missing[0]} is missing")
            return [path / s for s in shards]
        if (path / "model.safetensors").is_file():
            return [path / "model.safetensors"]
        pickles = [p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise refuse_pickle(pickles[0])
        raise InvalidInputError(f"{path}: no model.safetensors or model.safetensors.index.json in this folder")

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._layouts[self._where[name]].entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of ``name`` (from the header)."""
        code = self._layouts[self._where[name]].entries[name]["dtype"]
        try:
            return SAFETENSORS_DTYPES[code]
        except KeyError:
            raise InvalidInputError(f"{self._where[name]}: tensor '{name}' has dtype {code}, which eigenmix does not read") from None

    def get(self, name: str) -> Tensor:
        """Read one tensor (plain reads, no memory map), checked for NaN / Inf (with
        ``keep_last``, the kept tensor again when it is the one asked for: do not modify it)."""
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        file = self._where[name]
        try:
            tensor = self._layouts[file].read(self._files_open[file], name)
        except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as err:
            raise _bad_file(file, err) from err
        check_finite(name, tensor, file)
        if self._keep_last:
            self._last = (name, tensor)
        return tensor

    def items(self) -> Iterator[tuple[str, Tensor]]:
        for name in self._where:
            yield name, self.get(name)

    def close(self) -> None:
        self._last = None
        self._stack.close()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
