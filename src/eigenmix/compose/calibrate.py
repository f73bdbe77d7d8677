"""Each module's typical response on its own task, from a few unlabeled rows: the
statistics the spectral router's ``calibration: stats`` standardises by.

One forward pass of the base model per module over rows of that module's task; per routed
layer, the pooled input's score (:func:`eigenmix.compose.routers.spectral.module_energy`) of
every module is recorded, and module k keeps the mean and spread of *its own* score on
*its own* rows. Nothing but these two numbers per layer and module is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from eigenmix.compose.hooks import linear_at
from eigenmix.compose.library import Library
from eigenmix.compose.routers.spectral import Score, module_energy
from eigenmix.compose.routing import pooled
from eigenmix.errors import InvalidInputError


@torch.no_grad()
def calibrate(
    model: nn.Module, library: Library, batches: Mapping[str, dict[str, Tensor]], score: Score = "energy"
) -> dict[str, tuple[Tensor, Tensor]]:
    """``layer → (mean (K,), std (K,))`` of each module's score on its own task's rows
    (``batches[name]``: tokenised rows with their ``attention_mask``)."""
    views = {layer: library.view(layer) for layer in library.layers}
    sums = {layer: torch.zeros(len(library), 2, dtype=torch.float64) for layer in views}
    counts = torch.zeros(len(library))
    for k, name in enumerate(library.names):
        if name not in batches:
            raise InvalidInputError(f"no calibration rows for module '{name}'")
        inputs = batches[name]
        mask = inputs.get("attention_mask")
        seen: dict[str, Tensor] = {}
        hooks = [
            linear_at(model, layer, view.shape).register_forward_hook(lambda _, i, o, layer=layer, seen=seen: seen.setdefault(layer, i[0]))
            for layer, view in views.items()
            if k in view.members
        ]
        try:
            model(**inputs)
        finally:
            for hook in hooks:
                hook.remove()
        for layer, x in seen.items():
            view = views[layer]
            own = module_energy(pooled(x, mask), view, score)[:, 0, view.members.index(k)].double()  # (rows,)
            sums[layer][k] += torch.stack([own.sum(), own.square().sum()])
        counts[k] = next(iter(inputs.values())).shape[0]
    out = {}
    for layer, s in sums.items():
        n = counts.clamp(min=1).double()
        mean = s[:, 0] / n
        std = (s[:, 1] / n - mean.square()).clamp(min=0).sqrt()
        out[layer] = (mean.float(), std.float())
    return out
