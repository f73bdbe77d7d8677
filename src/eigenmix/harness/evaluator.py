"""One frozen base model whose adapted weights are swapped in place, and pre-batched splits.

Evaluation dominates the benchmark's time, so each split is tokenised (text) or
preprocessed (images) once, and cut into batches once (text sorted by length: little
padding); a merge is applied by writing ``W0 + scale · ΔW`` into the model's sites — its
``nn.Linear`` layers and ``groups = 1`` convs (a conv's ``ΔW`` in its kernel's shape) —
with no model rebuilt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from eigenmix.data import Example
from eigenmix.data.images import ImageExample, ImageSet
from eigenmix.errors import InvalidInputError
from eigenmix.harness.backbones import Backbone
from eigenmix.inputs import ImageInputs, TextInputs
from eigenmix.io.heads import HEAD_FILE
from eigenmix.io.safetensors_io import read_safetensors
from eigenmix.train.encoder import MINILM_ID, load_encoder


@dataclass(frozen=True)
class Split:
    """Rows of one or more tasks, tokenised together: padded batches in length order."""

    batches: tuple[dict[str, Tensor], ...]
    order: Tensor  # (N,) row index of each position in the concatenated batches
    labels: Tensor  # (N,) in row order
    spans: dict[str, tuple[int, int]]  # task → its rows [start, end)


@dataclass(frozen=True)
class Head:
    """A task's linear classification head."""

    weight: Tensor  # (classes, hidden)
    bias: Tensor  # (classes,)


def load_head(folder: Path) -> Head:
    """The head ``eigenmix.train`` saved beside an adapter (``head.safetensors``)."""
    tensors = read_safetensors(folder / HEAD_FILE)
    if set(tensors) != {"weight", "bias"} or tensors["weight"].ndim != 2 or tensors["bias"].shape != tensors["weight"].shape[:1]:
        raise InvalidInputError(f"{folder / HEAD_FILE}: not a linear head (needs 'weight' (classes, hidden) and 'bias' (classes,))")
    return Head(tensors["weight"], tensors["bias"])


class Evaluator:
    """A base model (default all-MiniLM-L6-v2), its original weights, and pooled features.

    Args:
        max_length: tokens per row (text).
        tokens_per_batch: padded tokens per forward pass (text).
        encoder: a local transformers encoder folder (default: the bundled all-MiniLM-L6-v2).
        backbone: any base model with its inputs instead (:func:`~eigenmix.harness.backbones.load_backbone`:
            ``efficientnet-lite0`` for images).
    """

    def __init__(
        self, max_length: int = 128, tokens_per_batch: int = 4096, encoder: Path | str | None = None, *, backbone: Backbone | None = None
    ) -> None:
        if backbone is None:
            model, tokenizer = load_encoder(encoder)
            backbone = Backbone(str(encoder or MINILM_ID), model, TextInputs(tokenizer, max_length))  # the one tokeniser
        self.encoder, self.inputs = backbone.model.eval().requires_grad_(False), backbone.inputs
        self.max_length = max_length
        self.tokens_per_batch = tokens_per_batch
        self.sites = {name: m for name, m in self.encoder.named_modules() if _is_site(m)}
        self.base = {name: m.weight.detach().clone() for name, m in self.sites.items()}

    def apply(self, deltas: Mapping[str, Tensor] | None = None, scale: float = 1.0) -> None:
        """Set every site to ``W0 + scale · ΔW`` (``W0`` where ``deltas`` has no entry); a
        conv's ``ΔW`` may be its matrix view or its kernel."""
        deltas = deltas or {}
        unknown = sorted(set(deltas) - set(self.sites))
        if unknown:
            raise InvalidInputError(f"the model has no layer '{unknown[0]}' (an nn.Linear or a groups = 1 conv)")
        with torch.no_grad():
            for name, module in self.sites.items():
                w = self.base[name]
                module.weight.copy_(w + scale * deltas[name].to(w.dtype).reshape(w.shape) if name in deltas else w)

    @property
    def text(self) -> TextInputs:
        """The text inputs (one line if the base model takes images)."""
        if not isinstance(self.inputs, TextInputs):
            raise InvalidInputError("this evaluator's base model takes images, not text")
        return self.inputs

    def images(self, groups: Mapping[str, ImageSet], batch_size: int = 256) -> Split:
        """Preprocess once: every task's images together, in order, in batches of ``batch_size``."""
        if not isinstance(self.inputs, ImageInputs):
            raise InvalidInputError("this evaluator's base model takes text, not images")
        spans, start = {}, 0
        for name, group in groups.items():
            spans[name] = (start, start + len(group))
            start += len(group)
        images = torch.cat([g.images for g in groups.values()])
        labels = torch.cat([g.labels for g in groups.values()])
        cut = self.inputs.batches(images, batch_size)
        return Split(tuple(batch for _, batch in cut), torch.arange(len(labels)), labels, spans)

    def split(self, groups: Mapping[str, Sequence[Example] | Sequence[ImageExample]], batch: int | None = None) -> Split:
        """Rows of either kind, prepared once: text tokenised (:meth:`tokenize`, ``batch``
        padded tokens a pass), images preprocessed (:meth:`images`, ``batch`` images a pass)."""
        if isinstance(self.inputs, TextInputs):
            return self.tokenize(groups, batch)  # type: ignore[arg-type]
        sets = {name: _image_rows(name, rows) for name, rows in groups.items()}
        return self.images(sets, batch or 256)

    def batch(self, rows: Sequence[Example] | Sequence[ImageExample]) -> dict[str, Tensor]:
        """``rows`` as one batch, in their order (what tuning and the routers' statistics read)."""
        return self.batches(rows, max(len(rows), 1))[0]

    def batches(self, rows: Sequence[Example] | Sequence[ImageExample], size: int) -> list[dict[str, Tensor]]:
        """``rows`` in batches of at most ``size`` rows, in their order."""
        if isinstance(self.inputs, TextInputs):
            return [b for _, b in self.inputs.batches(rows, size)]  # type: ignore[arg-type]
        return [b for _, b in self.inputs.batches([_image(r) for r in rows], size)]

    def tokenize(self, groups: Mapping[str, Sequence[Example]], tokens_per_batch: int | None = None) -> Split:
        """Tokenise once: every task's rows together, sorted by length, cut into batches of
        at most ``tokens_per_batch`` (default: the evaluator's) padded tokens (short rows
        travel in large batches)."""
        budget = tokens_per_batch or self.tokens_per_batch
        rows = [r for group in groups.values() for r in group]
        spans, start = {}, 0
        for name, group in groups.items():
            spans[name] = (start, start + len(group))
            start += len(group)
        cut = self.text.budget_batches(self.text.encode(rows), tokens=budget)
        order = [i for chunk, _ in cut for i in chunk]
        return Split(tuple(batch for _, batch in cut), torch.tensor(order), torch.tensor([r.label for r in rows]), spans)

    @torch.inference_mode()
    def features(self, split: Split) -> Tensor:
        """Mean-pooled last hidden states ``(N, hidden)``, in the split's row order."""
        pooled = []
        for batch in split.batches:
            pooled.append(self.inputs.pool(self.encoder(**batch), batch))
        out = torch.empty(len(split.order), pooled[0].shape[1])
        out[split.order] = torch.cat(pooled)
        return out

    def accuracies(self, split: Split, heads: Mapping[str, Head]) -> dict[str, float]:
        """Accuracy of each task's head on its rows, from one pass of the current encoder."""
        return head_accuracies(self.features(split), split, heads)


def head_accuracies(features: Tensor, split: Split, heads: Mapping[str, Head]) -> dict[str, float]:
    """Accuracy of each task's head on its rows' ``features`` ``(N, hidden)`` (row order)."""
    out = {}
    for name, (start, end) in split.spans.items():
        logits = features[start:end] @ heads[name].weight.T + heads[name].bias
        out[name] = float((logits.argmax(-1) == split.labels[start:end]).float().mean())
    return out


def _image(row: object) -> Tensor:
    if not isinstance(row, ImageExample):
        raise InvalidInputError(f"this evaluator's base model takes images, got a {type(row).__name__} row")
    return row.image


def _image_rows(name: str, rows: Sequence[object]) -> ImageSet:
    """Labelled image rows as a set (the class names are not needed to score them)."""
    images = [_image(r) for r in rows]
    labels = torch.tensor([int(r.label) for r in rows], dtype=torch.int64)  # type: ignore[attr-defined]
    names = tuple(str(k) for k in range(int(labels.max()) + 1 if len(labels) else 0))
    if not images:
        raise InvalidInputError(f"'{name}': no images")
    return ImageSet(torch.stack(images), labels, names)


def _is_site(module: nn.Module) -> bool:
    """A layer a merge's ``ΔW`` updates: an ``nn.Linear``, or a ``groups = 1`` conv."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv1d | nn.Conv2d) and module.groups == 1)
