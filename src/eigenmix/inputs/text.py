"""Text inputs: the one tokeniser of eigenmix. Every row (a text and an optional pair) is
tokenised on its own and then padded, so a row is the same tokens in every batch it falls
in and on every path (training, evaluation, calibration, routing, explaining); a single
text never gets an empty pair's extra ``[SEP]`` from a neighbour that has one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from eigenmix.inputs.protocol import TEXT_MASK, Batches


class TextRow(Protocol):
    """Anything with a ``text`` and an optional ``text_pair`` (an input row, a labelled example)."""

    @property
    def text(self) -> str: ...

    @property
    def text_pair(self) -> str | None: ...


def mean_pool(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of the token states ``(rows, tokens, d)`` over the real tokens → ``(rows, d)``."""
    if mask is None:
        return hidden.mean(1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (rows, tokens, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@dataclass(frozen=True)
class TextInputs:
    """A tokenizer's batches of text rows.

    Attributes:
        tokenizer: a transformers tokenizer.
        max_length: tokens a row is cut to.
    """

    tokenizer: Any
    max_length: int = 128
    kind: str = "text"

    def encode(self, rows: Sequence[TextRow]) -> list[dict[str, list[int]]]:
        """Each row tokenised alone (truncated to ``max_length``), unpadded."""
        return [dict(self.tokenizer(r.text, r.text_pair, truncation=True, max_length=self.max_length)) for r in rows]

    def pad(self, encoded: Sequence[Mapping[str, list[int]]]) -> dict[str, Tensor]:
        """Encoded rows padded into one batch of tensors."""
        return dict(self.tokenizer.pad([dict(e) for e in encoded], return_tensors="pt"))

    def batch(self, rows: Sequence[TextRow]) -> dict[str, Tensor]:
        """All ``rows`` as one padded batch, in their order."""
        return self.pad(self.encode(rows))

    def batches(self, rows: Sequence[TextRow], batch_size: int) -> Batches:
        """Length-sorted padded batches of at most ``batch_size`` rows: (row indices, batch)."""
        return self.budget_batches(self.encode(rows), rows=batch_size)

    def budget_batches(self, encoded: Sequence[Mapping[str, list[int]]], *, rows: int | None = None, tokens: int | None = None) -> Batches:
        """Encoded rows sorted by length and cut into batches of at most ``rows`` rows and
        ``tokens`` padded tokens (short rows travel in large batches)."""
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]["input_ids"]), i))
        out: Batches = []
        chunk: list[int] = []
        for i in order:  # lengths only grow along ``order``
            full = rows is not None and len(chunk) >= rows
            over = tokens is not None and (len(chunk) + 1) * len(encoded[i]["input_ids"]) > tokens
            if chunk and (full or over):
                out.append((chunk, self.pad([encoded[j] for j in chunk])))
                chunk = []
            chunk.append(i)
        if chunk:
            out.append((chunk, self.pad([encoded[j] for j in chunk])))
        return out

    def pool(self, output: Any, batch: Mapping[str, Tensor]) -> Tensor:
        """The mean of the last hidden states over the real tokens ``(rows, hidden)``."""
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output
        return mean_pool(hidden, batch.get(TEXT_MASK))

    def tokens(self, batches: Batches) -> dict[int, tuple[str, ...]]:
        """Each row's real tokens, as strings."""
        out = {}
        for chunk, batch in batches:
            for j, i in enumerate(chunk):
                n = int(batch[TEXT_MASK][j].sum())
                out[i] = tuple(self.tokenizer.convert_ids_to_tokens(batch["input_ids"][j][:n].tolist()))
        return out
