"""A small learned gate (in the spirit of LoRA-Flow and PHATGOOSE): multinomial logistic
regression from a row's features to its task's module, trained from a few rows per task
with the task as the only label, deciding once per sequence at the first routed layer.

Features: the pooled input of the first routed layer projected on every module's row space
(``[V_1 … V_K]ᵀ x̄``, ``Σ_k r_k`` numbers; what the adapters read), or the same of every
routed layer side by side (read in a first pass on the base model: two forward passes),
standardised with the training rows' mean and spread. Training is full-batch L-BFGS on cross-entropy plus
``l2 · ‖W‖²`` from a zero start: deterministic, and seconds on 2 cores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from eigenmix.compose.hooks import first_routed_layer, on_input
from eigenmix.compose.library import LayerView, Library
from eigenmix.compose.router_stats import stored_gate_rows
from eigenmix.compose.routers.registry import RouterParams, Stream, register
from eigenmix.compose.routing import Batch, Scope, mix, pooled
from eigenmix.errors import InvalidInputError
from eigenmix.inputs import row_mask


def projections(x: Tensor, view: LayerView, mask: Tensor | None) -> Tensor:
    """``(rows, Σ r_k)``: the pooled ``x`` projected on each module's row space."""
    x = pooled(x, mask)[:, 0]  # (rows, n)
    return torch.cat([x @ V.to(x.dtype) for V in view.V], dim=-1)


@torch.no_grad()
def gate_features(
    model: nn.Module, library: Library, batches: Mapping[str, dict[str, Tensor]], layers: Sequence[str] | None = None
) -> tuple[Tensor, Tensor]:
    """Features and labels of rows of each module's task: ``batches[name]`` are the
    tokenised rows of module ``name``'s task. Features: the pooled input of each of
    ``layers`` (default: the first routed layer only) projected on every module's row space,
    side by side in the order of ``layers``."""
    layers = list(layers) if layers is not None else [first_routed_layer(model, library.layers)]
    for layer in layers:
        if len(library.view(layer).members) != len(library):
            raise InvalidInputError(f"the gate reads layer '{layer}', which every module must have")
    seen: dict[str, Tensor] = {}

    def keep(layer: str) -> Any:
        return lambda x: seen.__setitem__(layer, x)

    hooks = [on_input(model, layer, library.view(layer).shape, keep(layer)) for layer in layers]
    features, labels = [], []
    try:
        for k, name in enumerate(library.names):
            if name not in batches:
                raise InvalidInputError(f"no rows for module '{name}'")
            seen.clear()
            model(**batches[name])
            mask = row_mask(batches[name])
            features.append(torch.cat([projections(seen[layer], library.view(layer), mask) for layer in layers], dim=-1))
            labels.append(torch.full((features[-1].shape[0],), k, dtype=torch.long))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(features), torch.cat(labels)


@dataclass(frozen=True)
class Gate:
    """``logits = ((f − mean) / std) Wᵀ + b``: ``W`` (K, F), ``b`` (K,), ``mean``/``std`` (F,);
    ``layers``: the layers whose projections make ``f`` (None: the first routed layer)."""

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    layers: tuple[str, ...] | None = None

    def logits(self, features: Tensor) -> Tensor:
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias


def logistic_regression(x: Tensor, labels: Tensor, classes: int, *, l2: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS on cross-entropy + ``l2 · ‖W‖²``,
    from a zero start (deterministic): ``(W (classes, F), b (classes,))`` in float64."""
    x = x.to(torch.float64)
    w = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, labels) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_gate(
    features: Tensor, labels: Tensor, modules: int, *, l2: float = 1e-3, max_iter: int = 300, layers: Sequence[str] | None = None
) -> Gate:
    """The gate: :func:`logistic_regression` on the standardised features."""
    x = features.to(torch.float64)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-8)
    w, b = logistic_regression((x - mean) / std, labels, modules, l2=l2, max_iter=max_iter)
    return Gate(w.float(), b.float(), mean.float(), std.float(), tuple(layers) if layers is not None else None)


class LearnedRouter:
    """The gate's softmax (at ``temperature``, over its ``top_k`` highest), once per sequence:
    at the first routed layer (a gate of one layer), or from every layer it reads in a first,
    scoring pass on the base model (``scope = "all"``, a gate with ``layers``)."""

    name = "learned"

    def __init__(self, gate: Gate, temperature: float = 1.0, top_k: int | None = 1) -> None:
        self.gate, self.temperature, self.top_k = gate, temperature, top_k
        self.scope: Scope = "all" if gate.layers is not None else "first"

    def coefficients(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        logits = self.gate.logits(projections(x, view, batch.mask).float()).to(x.dtype)
        return mix(logits, self.temperature, self.top_k).unsqueeze(1)

    def scores(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        return projections(x, view, batch.mask).unsqueeze(1)  # (rows, 1, Σr): this layer's features

    def decide(self, scores: dict[str, Tensor], views: dict[str, LayerView], k: int) -> Tensor:
        assert self.gate.layers is not None
        features = torch.cat([scores[layer][:, 0] for layer in self.gate.layers], dim=-1).float()
        return mix(self.gate.logits(features), self.temperature, self.top_k).unsqueeze(1)


def gate_from_rows(library: Library, layers: Sequence[str], rows: Mapping[str, Mapping[str, Tensor]], **fit: Any) -> Gate:
    """A gate fitted on each module's stored pooled inputs (``rows[name][layer]``: ``(rows,
    n)``) at ``layers``, the module as the label (what ``eigenmix route --router learned``
    does); one layer: it decides at that layer; several: from a first, scoring pass."""
    features, labels = [], []
    for k, name in enumerate(library.names):
        parts = [rows[name][layer].float() @ library.view(layer).stacked[2].float() for layer in layers]
        features.append(torch.cat(parts, dim=-1))
        labels.append(torch.full((parts[0].shape[0],), k, dtype=torch.long))
    return fit_gate(torch.cat(features), torch.cat(labels), len(library), layers=list(layers) if len(layers) > 1 else None, **fit)


class LearnedParams(RouterParams):
    """The learned router's settings in ``eigenmix route`` (the composition benchmark's choice:
    a gate of every layer, a dense softmax at temperature 3); the class's own defaults are
    a gate's plain top-1."""

    scope: Scope = Field(
        "all", description="first: a gate of the first routed layer, deciding there; all (and layer): of every routed layer (two passes)"
    )
    temperature: float = Field(3.0, gt=0, description="softmax temperature of the gate's logits")
    top_k: int | None = Field(None, ge=1, description="keep the k largest coefficients (unset: all)")


@register(
    "learned",
    router=LearnedRouter,
    params=LearnedParams,
    description="a logistic-regression gate on the input's projections on the modules' row spaces, fitted on the rows they keep",
    paper="eigenmix (this library): a small learned gate in the spirit of LoRA-Flow and PHATGOOSE; in eigenmix.compose.routers.learned",
    url=None,
)
def build_learned(library: Library, model: nn.Module, p: LearnedParams, stream: Stream | None) -> LearnedRouter:
    """The gate fitted on the pooled rows each module keeps (``eigenmix library add --rows``)
    at the first routed layer (``scope: first``) or at every layer."""
    layers = [first_routed_layer(model, library.layers)] if p.scope == "first" else library.layers
    gate = gate_from_rows(library, layers, stored_gate_rows(library, layers))
    return LearnedRouter(gate, temperature=p.temperature, top_k=p.top_k)
