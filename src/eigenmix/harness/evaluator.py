"""One frozen encoder whose adapted weights are swapped in place, and pre-tokenised splits.

Evaluation dominates the benchmark's time, so each split is tokenised once, sorted by
length (little padding) and cut into batches once; a merge is applied by writing
``W0 + scale · ΔW`` into the encoder's linear layers, with no model rebuilt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from eigenmix.data import Example
from eigenmix.errors import InvalidInputError
from eigenmix.inputs import TextInputs
from eigenmix.io.heads import HEAD_FILE
from eigenmix.io.safetensors_io import read_safetensors
from eigenmix.train.encoder import load_encoder


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
    """A base encoder (default all-MiniLM-L6-v2), its original weights, and mean-pooled features.

    Args:
        max_length: tokens per row.
        tokens_per_batch: padded tokens per forward pass.
        encoder: a local transformers encoder folder (default: the bundled all-MiniLM-L6-v2).
    """

    def __init__(self, max_length: int, tokens_per_batch: int = 4096, encoder: Path | str | None = None) -> None:
        self.encoder, tokenizer = load_encoder(encoder)
        self.encoder.eval().requires_grad_(False)
        self.inputs = TextInputs(tokenizer, max_length)  # the one tokeniser
        self.max_length = max_length
        self.tokens_per_batch = tokens_per_batch
        self.linears = {name: m for name, m in self.encoder.named_modules() if isinstance(m, nn.Linear)}
        self.base = {name: m.weight.detach().clone() for name, m in self.linears.items()}

    def apply(self, deltas: Mapping[str, Tensor] | None = None, scale: float = 1.0) -> None:
        """Set every linear to ``W0 + scale · ΔW`` (``W0`` where ``deltas`` has no entry)."""
        deltas = deltas or {}
        unknown = sorted(set(deltas) - set(self.linears))
        if unknown:
            raise InvalidInputError(f"the encoder has no layer '{unknown[0]}'")
        with torch.no_grad():
            for name, module in self.linears.items():
                w = self.base[name]
                module.weight.copy_(w + scale * deltas[name].to(w.dtype) if name in deltas else w)

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
        cut = self.inputs.budget_batches(self.inputs.encode(rows), tokens=budget)
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
