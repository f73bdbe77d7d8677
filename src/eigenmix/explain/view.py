"""What the figures and the report read of an explanation: a view (:class:`ExplanationView`),
so that they depend on this protocol and the probe :class:`Row`, not on
:class:`~eigenmix.explain.explanation.Explanation`, which renders itself with them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from eigenmix.explain.directions import LayerDirections


@dataclass(frozen=True)
class Row:
    """One probe row: its line in the inputs file, text (an image's: a label for it), group
    (e.g. its task), tokens (none for an image: its positions differ from layer to layer) and
    the second text of a sentence pair."""

    line: int
    text: str
    group: str | None
    tokens: tuple[str, ...]
    pair: str | None = None


class ExplanationView(Protocol):
    """The shares an explanation gives (see :class:`~eigenmix.explain.explanation.Explanation`)."""

    @property
    def target(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def parts(self) -> tuple[str, ...]: ...

    @property
    def layers(self) -> tuple[str, ...]: ...

    @property
    def directions(self) -> Mapping[str, LayerDirections]: ...

    @property
    def rows(self) -> tuple[Row, ...]: ...

    @property
    def tokens(self) -> Mapping[int, tuple[Tensor, Tensor]]: ...

    def layer_shares(self) -> Tensor: ...

    def row_shares(self) -> Tensor: ...

    def token_shares(self, row: int) -> Tensor: ...

    def groups(self) -> tuple[str, ...]: ...

    def group_shares(self) -> Tensor: ...

    def top_directions(self, part: int, n: int = 5, examples: int = 5) -> list[dict[str, Any]]: ...
