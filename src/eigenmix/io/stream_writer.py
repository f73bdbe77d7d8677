"""Write a safetensors file one tensor at a time, so a merge never holds its whole output.

The ``safetensors`` package writes a file only from a complete dict of tensors; a merge
of 224 layers would then hold ~1.25 GB of output in memory and write it in one burst.
This writer follows the format's spec (https://github.com/huggingface/safetensors#format):
8-byte little-endian header length N, N bytes of JSON header, then the raw tensor bytes
at the header's ``data_offsets``. Space for the header is reserved up front (the tensor
names and their count are known before the merge, the shapes are not), the data is
streamed after it, and the header is written last, padded with spaces — as safetensors
itself pads it. Files are read back with ``safetensors`` in the tests.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import TracebackType

import torch
from torch import Tensor

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


class StreamWriter:
    """Append tensors to a ``.safetensors`` file; :meth:`close` writes the header.

    Args:
        path: the file to write.
        names: every tensor name that will be added (sizes the reserved header).
        metadata: string metadata for the header's ``__metadata__``.
    """

    def __init__(self, path: Path | str, names: list[str], metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.metadata = dict(metadata or {})
        # name + dtype + a shape of two up-to-6-digit dims + two up-to-12-digit offsets + JSON punctuation
        per_tensor = 110
        reserve = 64 + len(json.dumps(self.metadata)) + sum(len(n) + per_tensor for n in names)
        self._reserve = (reserve + 7) // 8 * 8  # the data starts 8-byte aligned
        self._entries: dict[str, dict] = {}
        self._offset = 0
        self._file = self.path.open("wb")
        self._file.seek(8 + self._reserve)

    def add(self, name: str, tensor: Tensor) -> None:
        """Append one tensor (any supported dtype, any shape)."""
        if name in self._entries:
            raise ValueError(f"tensor '{name}' was already written")
        t = tensor.detach().to("cpu").contiguous()
        # numpy arrays are buffers; its stubs do not say so (no ``__buffer__``)
        data = memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B") if t.numel() else b""  # type: ignore[arg-type]
        self._file.write(data)
        size = t.numel() * t.element_size()
        self._entries[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [self._offset, self._offset + size]}
        self._offset += size

    def close(self) -> None:
        """Write the header into the reserved space (or, if it outgrew it, rewrite the file)."""
        header = {"__metadata__": self.metadata, **self._entries} if self.metadata else dict(self._entries)
        raw = json.dumps(header, separators=(",", ":")).encode()
        if len(raw) > self._reserve:
            self._rewrite(raw)
            return
        self._file.seek(0)
        self._file.write(struct.pack("<Q", self._reserve) + raw + b" " * (self._reserve - len(raw)))
        self._file.close()

    def _rewrite(self, raw: bytes) -> None:
        """Rare path: the header needed more room than reserved; shift the data once."""
        size = (len(raw) + 7) // 8 * 8
        self._file.close()
        data_path = self.path.with_suffix(".data")
        self.path.rename(data_path)
        with data_path.open("rb") as src, self.path.open("wb") as dst:
            dst.write(struct.pack("<Q", size) + raw + b" " * (size - len(raw)))
            src.seek(8 + self._reserve)
            while chunk := src.read(64 << 20):
                dst.write(chunk)
        data_path.unlink()

    def abort(self) -> None:
        self._file.close()

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
