"""The caller's coefficients per row: mixed-adapter batches (each row its own module, as
PEFT's ``adapter_names=``) and the oracle (each row its own task's module)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from eigenmix.compose.library import LayerView, Library
from eigenmix.compose.routing import Batch, Scope
from eigenmix.errors import InvalidInputError


def one_hot(library: Library, names: Sequence[str | None]) -> Tensor:
    """``(rows, K)``: row i uses module ``names[i]`` alone (None: the base model alone)."""
    index = {name: k for k, name in enumerate(library.names)}
    out = torch.zeros(len(names), len(library))
    for i, name in enumerate(names):
        if name is None:
            continue
        if name not in index:
            raise InvalidInputError(f"the library has no module '{name}' (it has: {', '.join(library.names)})")
        out[i, index[name]] = 1.0
    return out


class GivenRouter:
    """The ``given`` coefficients of the forward call, per row, for every layer."""

    name = "given"
    scope: Scope = "layer"

    def coefficients(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        if batch.given is None:
            raise InvalidInputError("this router needs the coefficients of each row (given=…)")
        if batch.given.shape[0] != x.shape[0]:
            raise InvalidInputError(f"{batch.given.shape[0]} rows of coefficients for a batch of {x.shape[0]}")
        return batch.given[:, list(view.members)].to(x.dtype).unsqueeze(1)
