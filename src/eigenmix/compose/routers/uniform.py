"""μ-routing: every module of a layer at ``1 / K_l`` — the ``linear`` average merge, live."""

from __future__ import annotations

import torch
from torch import Tensor

from eigenmix.compose.library import LayerView
from eigenmix.compose.routing import Batch, Scope


class UniformRouter:
    """``g_k = 1 / K_l`` for every row and token (``K_l``: the modules that have the layer)."""

    name = "uniform"
    scope: Scope = "layer"

    def coefficients(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        K = len(view.members)
        return torch.full((x.shape[0], 1, K), 1.0 / K, dtype=x.dtype)
