"""μ-routing: every module of a layer at ``1 / K_l`` — the ``linear`` average merge, live."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eigenmix.compose.library import LayerView, Library
from eigenmix.compose.routers.registry import RouterParams, Stream, register
from eigenmix.compose.routing import Batch, Scope


class UniformRouter:
    """``g_k = 1 / K_l`` for every row and token (``K_l``: the modules that have the layer)."""

    name = "uniform"
    scope: Scope = "layer"

    def coefficients(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        K = len(view.members)
        return torch.full((x.shape[0], 1, K), 1.0 / K, dtype=x.dtype)


class UniformParams(RouterParams):
    """The uniform router has no settings."""


@register(
    "uniform",
    router=UniformRouter,
    params=UniformParams,
    description="every module of a layer at 1/K (μ-routing: the linear average merge, live)",
    paper="eigenmix (this library): the average merge as a router, the baseline of every other",
    url=None,
)
def build_uniform(library: Library, model: nn.Module, p: UniformParams, stream: Stream | None) -> UniformRouter:
    return UniformRouter()
