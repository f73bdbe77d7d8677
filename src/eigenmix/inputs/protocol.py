"""The input protocol: what the live pieces may assume about a batch.

A batch is a dict of the model's keyword tensors, rows first (``model(**batch)``). The input
kind that made it says which of a site's token rows are real (:func:`row_mask`): a text
batch carries its tokenizer's mask; an image batch has none, and every position of every
image is real. Nothing outside this package names a modality's keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from torch import Tensor

Row = TypeVar("Row", contravariant=True)
Batches = list[tuple[list[int], dict[str, Tensor]]]  # (row indices, the model's keyword tensors)

TEXT_MASK = "attention_mask"  # the key of a tokenizer's (rows, tokens) mask of real tokens


def row_mask(batch: Mapping[str, Tensor]) -> Tensor | None:
    """``(rows, tokens)`` 1 for real tokens, or None when every row of every site is real
    (images; a batch without a mask)."""
    return batch.get(TEXT_MASK)


class Inputs(Protocol[Row]):
    """One modality's rows → batches → features."""

    kind: str  # "text" | "image"

    def batches(self, rows: Sequence[Row], batch_size: int) -> Batches:
        """``rows`` cut into batches of at most ``batch_size`` rows, each with its row indices."""
        ...

    def pool(self, output: Any, batch: Mapping[str, Tensor]) -> Tensor:
        """The model's output on ``batch`` → one feature vector per row ``(rows, d)``."""
        ...
