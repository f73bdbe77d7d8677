"""The bridge's offline anchors: ImageNet's 1,000 classes seen by each encoder.

- **Names**: Debian's ``darknet`` ships ``imagenet.labels.list`` (WordNet ids) and
  ``imagenet.shortnames.list`` (their names, line by line); the first 1,000 lines are
  ILSVRC-2012's classes, and sorted by WordNet id they are in the order of every ImageNet
  classifier (281–285: cats, 967: espresso).
- **Image side**: EfficientNet-Lite0's classifier rows ``_fc.weight`` ``(1000, 1280)``: each
  class's direction in the pooled-feature space (unit length).
- **Text side**: all-MiniLM-L6-v2's mean-pooled, unit-length embedding of each name, averaged
  over prompt templates (``TEMPLATES``) and normalised again.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from eigenmix.errors import InvalidInputError

DARKNET = Path("/usr/share/darknet/data")
_INSTALL = "install Debian's darknet package (apt-get install darknet) for ImageNet's class names"
TEMPLATES = ("{}", "a photo of a {}.", "a picture of a {}.", "an image of the {}.")


def imagenet_classes(root: Path = DARKNET) -> list[str]:
    """The 1,000 ILSVRC-2012 class names in the classifiers' order."""
    ids, names = root / "imagenet.labels.list", root / "imagenet.shortnames.list"
    if not ids.is_file() or not names.is_file():
        raise InvalidInputError(f"{root}: no imagenet.labels.list / imagenet.shortnames.list; {_INSTALL}")
    wnids, labels = ids.read_text().split("\n")[:1000], names.read_text().split("\n")[:1000]
    if len(wnids) != 1000 or len(labels) != 1000 or not all(w.startswith("n") for w in wnids):
        raise InvalidInputError(f"{root}: the first 1,000 lines are not ImageNet's WordNet ids and names")
    return [name for _, name in sorted(zip(wnids, labels, strict=True))]


def image_anchors() -> Tensor:
    """EfficientNet-Lite0's ImageNet classifier rows, unit length: ``(1000, 1280)`` float64."""
    from eigenmix.vision import load_efficientnet_lite0

    weight = load_efficientnet_lite0().get_parameter("_fc.weight")  # (1000, 1280)
    return F.normalize(weight.detach().to(torch.float64), dim=-1)


@torch.no_grad()
def text_embeddings(texts: list[str], templates: tuple[str, ...] = TEMPLATES, batch_size: int = 256) -> Tensor:
    """all-MiniLM-L6-v2's unit embedding of each text, averaged over ``templates``: ``(N, 384)`` float64."""
    from eigenmix.inputs import TextInputs
    from eigenmix.train.encoder import load_encoder

    if not texts or not all(t.strip() for t in texts):
        raise InvalidInputError("text anchors must be non-empty strings")
    model, tokenizer = load_encoder()
    inputs = TextInputs(tokenizer, 32)
    total = torch.zeros(len(texts), int(model.config.hidden_size), dtype=torch.float64)
    for template in templates:
        rows = [_Row(template.format(t)) for t in texts]
        for chunk, batch in inputs.batches(rows, batch_size):
            total[chunk] += F.normalize(inputs.pool(model.eval()(**batch), batch).to(torch.float64), dim=-1)
    return F.normalize(total, dim=-1)


class _Row:
    def __init__(self, text: str) -> None:
        self.text, self.text_pair = text, None
