"""``eigenmix bridge``: fit a bridge from a YAML config, and classify images by class names.

Config (paths relative to the file)::

    anchors: imagenet                 # built in: Lite0's 1,000 classifier rows <-> MiniLM of their names
    # or your own pairs, row i of each a pair:
    # image_anchors: image.safetensors   # one tensor "features" (n, d_image)
    # text_anchors: names.txt            # n lines, embedded by all-MiniLM-L6-v2
    image_dim: 1280                   # optional: the dimensions the encoders must have
    text_dim: 384
    fit: {start: cca, image_rank: 384, text_rank: 384}   # eigenmix.bridge.BridgeSettings

The image encoder is EfficientNet-Lite0 (its pooled features, unit length, are what
``classify`` puts on the image side), the text encoder all-MiniLM-L6-v2 (unit embeddings,
averaged over ``eigenmix.harness.anchors.TEMPLATES``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from eigenmix.bridge import Bridge, BridgeSettings, fit_bridge
from eigenmix.data.images import ImageRow
from eigenmix.errors import InvalidInputError
from eigenmix.io.yaml_config import read_yaml_config

IMAGE_ENCODER = "efficientnet-lite0"
TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


class BridgeConfig(BaseModel):
    """A bridge fit: the anchors (built in, or two files of pairs) and the fit's settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    anchors: Literal["imagenet"] | None = Field(None, description="imagenet: the built-in ImageNet class anchors")
    image_anchors: Path | None = Field(None, description="a safetensors file with one tensor 'features' (n, d_image)")
    text_anchors: Path | None = Field(None, description="a text file of n lines, one anchor text each")
    image_dim: int | None = Field(None, ge=1, description="the image encoder's feature dimension, checked against the anchors")
    text_dim: int | None = Field(None, ge=1, description="the text encoder's dimension, checked against the anchors")
    fit: BridgeSettings = Field(default_factory=BridgeSettings, description="how the bridge is fitted")

    @model_validator(mode="after")
    def _one_source(self) -> BridgeConfig:
        files = (self.image_anchors is not None, self.text_anchors is not None)
        if self.anchors is None and files != (True, True):
            raise ValueError("give anchors: imagenet, or both image_anchors and text_anchors")
        if self.anchors is not None and any(files):
            raise ValueError("anchors: imagenet and anchor files exclude each other")
        return self

    def inputs(self) -> list[Path]:
        return [p for p in (self.image_anchors, self.text_anchors) if p is not None]


def load_bridge_config(path: Path | str) -> BridgeConfig:
    return read_yaml_config(path, BridgeConfig, ("image_anchors", "text_anchors"))


def read_anchor_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such text anchors file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not UTF-8 text") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise InvalidInputError(f"{path}: no anchor texts")
    return texts


def read_image_features(path: Path) -> Tensor:
    from eigenmix.io.safetensors_io import read_safetensors

    tensors = read_safetensors(path)
    if set(tensors) != {"features"}:
        raise InvalidInputError(f"{path}: needs one tensor 'features' of shape (n, d), got tensors {sorted(tensors)}")
    if tensors["features"].ndim != 2:
        raise InvalidInputError(f"{path}: tensor 'features' must be (n, d), got shape {tuple(tensors['features'].shape)}")
    return tensors["features"].to(torch.float64)


def anchors(config: BridgeConfig) -> tuple[Tensor, list[str]]:
    """The image-side anchor features and the text anchors, read and checked (no encoder run)."""
    from eigenmix.harness.anchors import image_anchors, imagenet_classes

    if config.anchors == "imagenet":
        X, texts = image_anchors(), imagenet_classes()
    else:
        assert config.image_anchors is not None and config.text_anchors is not None
        X, texts = read_image_features(config.image_anchors), read_anchor_texts(config.text_anchors)
    if X.shape[0] != len(texts):
        raise InvalidInputError(f"{X.shape[0]} image anchors but {len(texts)} text anchors: each row is a pair")
    if config.image_dim is not None and X.shape[1] != config.image_dim:
        raise InvalidInputError(f"the image anchors have dimension {X.shape[1]}, the config says image_dim {config.image_dim}")
    return F.normalize(X, dim=-1), texts


def fit_from_config(config: BridgeConfig) -> Bridge:
    """Read the anchors, embed the texts, fit (every mistake is one line before the fit)."""
    from eigenmix.bridge.bases import check_features
    from eigenmix.harness.anchors import text_embeddings

    X, texts = anchors(config)
    check_features(X, "image anchors")
    Y = text_embeddings(texts)
    if config.text_dim is not None and Y.shape[1] != config.text_dim:
        raise InvalidInputError(f"the text encoder gives dimension {Y.shape[1]}, the config says text_dim {config.text_dim}")
    bridge = fit_bridge(X, Y, config.fit)
    info = {**bridge.info, "image_encoder": IMAGE_ENCODER, "text_encoder": TEXT_ENCODER, "anchor_texts": texts}
    return Bridge(bridge.image, bridge.text, bridge.P_image, bridge.P_text, bridge.lam, info)


def parse_labels(raw: str) -> list[str]:
    labels = [x.strip() for x in raw.split(",")]
    if not labels or not all(labels):
        raise InvalidInputError(f"--labels '{raw}': class names, comma-separated, none empty")
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise InvalidInputError(f"--labels: '{twice[0]}' is named twice")
    if len(labels) < 2:
        raise InvalidInputError("--labels: at least 2 class names")
    return labels


@torch.no_grad()
def image_features(rows: Sequence[ImageRow], size: int, batch_size: int = 64) -> Tensor:
    """Lite0's pooled features of the images, unit length, in order: ``(N, 1280)`` float64."""
    from eigenmix.harness.backbones import load_backbone

    backbone = load_backbone(IMAGE_ENCODER, image_size=size)
    out = [backbone.features(backbone.model(**batch), batch) for _, batch in backbone.batches(list(rows), batch_size)]
    return F.normalize(torch.cat(out).to(torch.float64), dim=-1)


def classify(bridge: Bridge, rows: Sequence[ImageRow], labels: list[str], size: int) -> Tensor:
    """``(N, classes)`` scores of every image against every class name."""
    from eigenmix.harness.anchors import text_embeddings

    if bridge.info.get("image_encoder", IMAGE_ENCODER) != IMAGE_ENCODER:
        raise InvalidInputError(f"the bridge's image encoder is {bridge.info['image_encoder']}; classify runs {IMAGE_ENCODER}")
    if bridge.image.dim != 1280:
        raise InvalidInputError(f"the bridge's image side has dimension {bridge.image.dim}; {IMAGE_ENCODER}'s features have 1280")
    return bridge.scores(image_features(rows, size), text_embeddings(labels))


def explain(bridge: Bridge, image: Path, text: str, size: int, top: int) -> dict:
    """Which joint directions carry the pair (a PNG, a text), read by the bridge's anchor texts."""
    from eigenmix.bridge.explain import explain_pair
    from eigenmix.data.images import read_png
    from eigenmix.harness.anchors import text_embeddings

    if not text.strip():
        raise InvalidInputError("--text: an empty text")
    names = [str(t) for t in bridge.info.get("anchor_texts", [])]
    if not names:
        raise InvalidInputError("the bridge records no anchor texts (fit it with eigenmix bridge fit)")
    x = image_features([ImageRow(1, read_png(image))], size)[0]
    y = text_embeddings([text])[0]
    out = explain_pair(bridge, x, y, text_embeddings(names), names, top=top)
    return {"image": str(image), "text": text, **out}
