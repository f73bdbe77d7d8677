"""Each module's typical response on its own task, from a few unlabeled rows: the
statistics the spectral router's ``calibration: stats`` standardises by.

One forward pass of the base model per module over rows of that module's task; per routed
layer, the sequence score (:func:`eigenmix.compose.scores.sequence_scores`) of
every module is recorded, and module k keeps the mean and spread of *its own* score on
*its own* rows. Nothing but these two numbers per layer and module is kept.

:func:`stream_statistics`: the same two numbers of every module over an unlabeled stream of
rows of any task (the ``stream`` calibration computed once over the stream, not per batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from eigenmix.compose.hooks import on_input
from eigenmix.compose.library import Library
from eigenmix.compose.routing import pooled
from eigenmix.compose.scores import Score, sequence_scores
from eigenmix.errors import InvalidInputError
from eigenmix.inputs import row_mask


def layer_inputs(model: nn.Module, library: Library, layers: Iterable[str], inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """One forward pass of ``model`` on ``inputs``; the input of each of ``layers``."""
    seen: dict[str, Tensor] = {}

    def keep(layer: str) -> Callable[[Tensor], None]:
        return lambda x: seen.__setitem__(layer, x) if layer not in seen else None

    hooks = [on_input(model, layer, library.view(layer).shape, keep(layer)) for layer in layers]
    try:
        model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@torch.no_grad()
def calibrate(
    model: nn.Module, library: Library, batches: Mapping[str, dict[str, Tensor]], score: Score = "energy"
) -> dict[str, tuple[Tensor, Tensor]]:
    """``layer → (mean (K,), std (K,))`` of each module's score on its own task's rows
    (``batches[name]``: a batch of its rows, as the model's keyword tensors)."""
    views = {layer: library.view(layer) for layer in library.layers}
    sums = {layer: torch.zeros(len(library), 2, dtype=torch.float64) for layer in views}
    counts = torch.zeros(len(library))
    for k, name in enumerate(library.names):
        if name not in batches:
            raise InvalidInputError(f"no calibration rows for module '{name}'")
        inputs = batches[name]
        mask = row_mask(inputs)
        seen = layer_inputs(model, library, [layer for layer, view in views.items() if k in view.members], inputs)
        for layer, x in seen.items():
            view = views[layer]
            own = sequence_scores(x, view, mask, score)[:, 0, view.members.index(k)].double()  # (rows,)
            sums[layer][k] += torch.stack([own.sum(), own.square().sum()])
        counts[k] = next(iter(inputs.values())).shape[0]
    out = {}
    for layer, s in sums.items():
        n = counts.clamp(min=1).double()
        mean = s[:, 0] / n
        std = (s[:, 1] / n - mean.square()).clamp(min=0).sqrt()
        out[layer] = (mean.float(), std.float())
    return out


@torch.no_grad()
def stream_statistics(
    model: nn.Module, library: Library, batches: Iterable[dict[str, Tensor]], score: Score = "energy"
) -> dict[str, tuple[Tensor, Tensor]]:
    """``layer → (mean (K,), std (K,))`` of every module's score over an unlabeled stream of
    rows (any task, no labels): the ``stream`` calibration, computed once over the stream
    rather than within each batch."""
    views = {layer: library.view(layer) for layer in library.layers}
    sums = {layer: torch.zeros(2, len(view.members), dtype=torch.float64) for layer, view in views.items()}
    rows = 0
    for inputs in batches:
        for layer, x in layer_inputs(model, library, views, inputs).items():
            s = sequence_scores(x, views[layer], row_mask(inputs), score)[:, 0].double()  # (rows, K_l)
            sums[layer] += torch.stack([s.sum(0), s.square().sum(0)])
        rows += int(next(iter(inputs.values())).shape[0])
    if rows == 0:
        raise InvalidInputError("the stream has no rows")
    out = {}
    for layer, s in sums.items():
        mean = s[0] / rows
        std = (s[1] / rows - mean.square()).clamp(min=0).sqrt()
        full_mean, full_std = torch.zeros(len(library)), torch.ones(len(library))
        members = list(views[layer].members)
        full_mean[members], full_std[members] = mean.float(), std.float()
        out[layer] = (full_mean, full_std)
    return out


@torch.no_grad()
def module_statistics(
    model: nn.Module, library: Library, name: str, batch: dict[str, Tensor], score: Score = "energy"
) -> dict[str, Tensor]:
    """What a module keeps beside it in the library from a few unlabeled rows of its own task
    (``batch``, tokenised): per layer its score's mean and spread (``<layer>.mean``,
    ``<layer>.std``: the ``stats`` calibration), and the rows' pooled inputs at every layer
    (``pooled.<layer>``: what the learned gate is fitted on)."""
    own = Library(library.base_model)
    own.add_entry(library.entry(name))
    stats = calibrate(model, own, {name: batch}, score)
    out = {f"{layer}.{key}": t[0] for layer, (mean, std) in stats.items() for key, t in (("mean", mean), ("std", std))}
    for layer, x in layer_inputs(model, own, own.layers, batch).items():
        out[f"pooled.{layer}"] = pooled(x, row_mask(batch))[:, 0].contiguous()
    return out


def stored_statistics(library: Library) -> dict[str, tuple[Tensor, Tensor]]:
    """``layer → (mean (K,), std (K,))`` from the statistics the modules keep (every module
    must have them: ``eigenmix library add --rows``)."""
    missing = [e.name for e in library if not any(k.endswith(".mean") for k in e.stats)]
    if missing:
        raise InvalidInputError(
            f"module '{missing[0]}' keeps no statistics; add it with rows of its task (--rows) to use calibration 'stats'"
        )
    out = {}
    for layer in library.layers:
        mean, std = torch.zeros(len(library)), torch.ones(len(library))
        for k, e in enumerate(library):
            if layer in e.layers:
                mean[k], std[k] = e.stats[f"{layer}.mean"], e.stats[f"{layer}.std"]
        out[layer] = (mean, std)
    return out


def stored_gate_rows(library: Library, layers: Sequence[str]) -> dict[str, dict[str, Tensor]]:
    """Each module's stored pooled inputs at ``layers`` (what the learned gate is fitted on)."""
    for layer in layers:
        missing = [e.name for e in library if f"pooled.{layer}" not in e.stats]
        if missing:
            raise InvalidInputError(
                f"module '{missing[0]}' keeps no rows at '{layer}'; add it with rows of its task (--rows) to use the learned router"
            )
    return {e.name: {layer: e.stats[f"pooled.{layer}"] for layer in layers} for e in library}
