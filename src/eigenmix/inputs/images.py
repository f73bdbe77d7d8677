"""Image inputs: uint8 images resized (bilinear, antialiased) and normalised into the
backbone's ``pixel_values``; no mask (every position of every image is real); features are
the model's pooled output, or the spatial mean of a feature map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from eigenmix.errors import InvalidInputError
from eigenmix.inputs.protocol import Batches

PIXELS = "pixel_values"


def centre_square(x: Tensor) -> Tensor:
    """The centred square crop of ``(…, H, W)``."""
    height, width = x.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return x[..., top : top + side, left : left + side]


@dataclass(frozen=True)
class ImageInputs:
    """Images → ``{key: (rows, 3, size, size)}``, the model's keyword tensors.

    Attributes:
        size: the side the images are resized to.
        mean: subtracted, on the 0–255 scale (EfficientNet-Lite: 127).
        std: divided by, on the 0–255 scale (EfficientNet-Lite: 128).
        key: the model's keyword for the pixels (``pixel_values``; EfficientNet-Lite's ``inputs``).
    """

    size: int
    mean: float = 127.0
    std: float = 128.0
    key: str = PIXELS
    kind: str = "image"

    def pixels(self, images: Tensor) -> Tensor:
        """Centre-cropped to a square, resized (bilinear, antialiased), normalised; grey
        repeated to three channels: uint8 ``(N, H, W)`` or ``(N, 1|3, H, W)`` → float32
        ``(N, 3, size, size)``. Call it per batch: at 224 px one image is 602 KB."""
        if images.dtype != torch.uint8:
            raise InvalidInputError(f"images must be uint8, got {images.dtype}")
        x = images[:, None] if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise InvalidInputError(f"images must be (N, H, W), (N, 1, H, W) or (N, 3, H, W), got {tuple(images.shape)}")
        if self.size < 1:
            raise InvalidInputError(f"size must be >= 1, got {self.size}")
        x = centre_square(x).float()
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x

    def batches(self, rows: Sequence[Tensor] | Tensor, batch_size: int) -> Batches:
        """Images (a ``(N, …)`` uint8 tensor or a sequence of images) in batches, in order."""
        images = rows if isinstance(rows, Tensor) else torch.stack(list(rows))
        out: Batches = []
        for start in range(0, images.shape[0], batch_size):
            chunk = list(range(start, min(start + batch_size, images.shape[0])))
            out.append((chunk, {self.key: self.pixels(images[chunk[0] : chunk[-1] + 1])}))
        return out

    def pool(self, output: Any, batch: Mapping[str, Tensor]) -> Tensor:
        """Pooled features ``(rows, d)``: the output itself, or a feature map's spatial mean."""
        x = output if isinstance(output, Tensor) else output[0]
        return x.flatten(2).mean(-1) if x.ndim > 2 else x
