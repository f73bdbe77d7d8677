"""``merge(modules, method, **params)``: layer by layer, one registry, one path.

Per layer, a spectral method gets the joint-basis decomposition of the K deltas
(:func:`eigenmix.merge.layer.decompose`) and returns a factored result; an element-wise
method gets the K dense deltas of that one layer. Vector deltas (biases) are merged by
element-wise methods as they are, and by the weighted sum times ``scale`` otherwise.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from eigenmix.errors import InvalidInputError, ShapeMismatchError
from eigenmix.merge.elementwise import weighted
from eigenmix.merge.layer import decompose, work_dtype
from eigenmix.merge.registry import MergeMethod, MergeParams, get_method
from eigenmix.modules import AnyDelta, DenseDelta, Module, SpectralDelta


@dataclass(frozen=True)
class LayerResult:
    """What one layer's merge produced, for tables and reports."""

    layer: str
    shape: tuple[int, ...]
    rank: int
    seconds: float


def layer_seed(seed: int, layer: str) -> int:
    """A per-layer seed, independent of the order in which layers are processed."""
    return (seed * 1_000_003 + zlib.crc32(layer.encode())) % (2**63)


def merge_layer(
    method: MergeMethod,
    params: MergeParams,
    deltas: Sequence[AnyDelta],
    weights: Sequence[float],
    *,
    layer: str = "",
    seed: int = 0,
    dense_rank: int | None = None,
    dense_energy: float = 1.0,
) -> AnyDelta:
    """Merge K deltas of one layer with ``method``; the function the CLI runs per layer."""
    rng = torch.Generator().manual_seed(layer_seed(seed, layer))
    dtype = work_dtype(deltas)
    w = torch.tensor(list(weights), dtype=torch.float64)
    if len(deltas[0].shape) != 2:
        stacked = torch.stack([d.dense().to(torch.float64) for d in deltas])
        if method.kind == "elementwise":
            return DenseDelta(method.fn(stacked, w, params, rng).to(dtype))
        return DenseDelta((params.scale * weighted(stacked, w).sum(0)).to(dtype))
    if method.kind == "elementwise":
        stacked = torch.stack([d.dense().to(torch.float64) for d in deltas])  # (K, m, n): this layer only
        return DenseDelta(method.fn(stacked, w, params, rng).to(dtype))
    layer_spectra = decompose(deltas, weights, dense_rank=dense_rank, dense_energy=dense_energy, seed=seed)
    result = method.fn(layer_spectra, params, rng)
    return SpectralDelta(result.U.to(dtype), result.S.to(dtype), result.V.to(dtype))


def check_compatible(modules: Sequence[Module]) -> None:
    """Same base model (where recorded) and the same shape for every shared layer."""
    bases = {m.base_model for m in modules if m.base_model}
    if len(bases) > 1:
        pairs = ", ".join(f"{m.name}: {m.base_model}" for m in modules if m.base_model)
        raise InvalidInputError(f"the modules come from different base models ({pairs})")
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for m in modules:
        for layer, shape in m.shapes().items():  # from headers for lazily read adapters
            if layer in shapes and shapes[layer][0] != shape:
                first_shape, first = shapes[layer]
                raise ShapeMismatchError(f"layer '{layer}' has shape {first_shape} in {first} but {shape} in {m.name}")
            shapes.setdefault(layer, (shape, m.name))


def iter_merge(
    modules: Sequence[Module],
    method: str,
    *,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    dense_rank: int | None = None,
    dense_energy: float = 1.0,
    **params: Any,
) -> Iterator[tuple[str, AnyDelta, LayerResult]]:
    """Merge layer by layer, yielding ``(layer, merged delta, LayerResult)`` as each layer
    is done, so a writer can stream the output; arguments as for :func:`merge`.

    All checks (method, parameters, weights, shapes, base models) run before the first
    layer is merged.
    """
    spec, parsed, weights = _prepare(modules, method, weights, params)
    yield from _merge_layers(modules, spec, parsed, weights, seed=seed, dense_rank=dense_rank, dense_energy=dense_energy)


def _merge_layers(
    modules: Sequence[Module],
    spec: MergeMethod,
    parsed: MergeParams,
    weights: list[float],
    *,
    seed: int,
    dense_rank: int | None,
    dense_energy: float,
) -> Iterator[tuple[str, AnyDelta, LayerResult]]:
    """The layer loop of :func:`iter_merge`, on already checked inputs."""
    for layer in dict.fromkeys(name for m in modules for name in m.layers):
        start = time.perf_counter()
        members = [(m.layers[layer], w) for m, w in zip(modules, weights, strict=True) if layer in m.layers]
        delta = merge_layer(
            spec, parsed, [d for d, _ in members], [w for _, w in members], layer=layer, seed=seed,
            dense_rank=dense_rank, dense_energy=dense_energy,
        )  # fmt: skip
        rank = delta.rank if isinstance(delta, SpectralDelta) else min(delta.shape) if len(delta.shape) == 2 else 0
        yield layer, delta, LayerResult(layer, tuple(delta.shape), rank, time.perf_counter() - start)


def _prepare(
    modules: Sequence[Module], method: str, weights: Sequence[float] | None, params: dict[str, Any]
) -> tuple[MergeMethod, MergeParams, list[float]]:
    """Every check that runs before the first layer: method, parameters, weights, shapes."""
    spec = get_method(method)
    parsed = spec.parse_params(params)
    if not modules:
        raise InvalidInputError("merge needs at least one module")
    weights = [1.0] * len(modules) if weights is None else list(weights)
    if len(weights) != len(modules):
        raise InvalidInputError(f"{len(weights)} weights for {len(modules)} modules")
    check_compatible(modules)
    return spec, parsed, weights


def merged_extras(modules: Sequence[Module], policy: Literal["per_task", "refuse"]) -> dict[str, torch.Tensor]:
    """The inputs' non-delta tensors, kept per task as ``"{module}/{name}"``; with
    ``"refuse"``, an error if any module has some."""
    if policy == "refuse" and any(m.extras for m in modules):
        holder = next(m for m in modules if m.extras)
        raise InvalidInputError(
            f"module {holder.name} carries non-delta tensors ({', '.join(sorted(holder.extras)[:3])}); "
            "a merge cannot combine them: use extras 'per_task' to keep each module's copy"
        )
    return {f"{m.name}/{k}": t for m in modules for k, t in m.extras.items()}


def merge(
    modules: Sequence[Module],
    method: str,
    *,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    dense_rank: int | None = None,
    dense_energy: float = 1.0,
    extras: Literal["per_task", "refuse"] = "per_task",
    name: str = "merged",
    on_layer: Callable[[LayerResult], None] | None = None,
    **params: Any,
) -> Module:
    """Merge ``modules`` layer by layer with a registered ``method``.

    Args:
        modules: K modules of one base model. A layer some modules lack is merged over
            the modules that have it. A merge of one module returns it unchanged.
        method: a registered name (see ``eigenmix methods``).
        weights: per-module weights (default 1 each).
        seed: seeds the random methods, per layer (bit-identical re-runs).
        dense_rank: dense task vectors are decomposed by a randomized SVD to this rank
            for spectral methods (exact SVD when None).
        dense_energy: share of each dense delta's energy kept for spectral methods.
        extras: ``"per_task"`` keeps each module's non-delta tensors (heads) under
            ``"{module}/{name}"``; ``"refuse"`` raises if any module has some.
        on_layer: called after each layer (progress bars, tables).
        **params: the method's parameters (validated; unknown names are errors).

    Returns:
        The merged module: spectral deltas for spectral methods, dense ones otherwise.
    """
    spec, parsed, weights = _prepare(modules, method, weights, params)
    kept = merged_extras(modules, extras)
    if len(modules) == 1:
        return modules[0]
    layers: dict[str, AnyDelta] = {}
    for layer, delta, result in _merge_layers(modules, spec, parsed, weights, seed=seed, dense_rank=dense_rank, dense_energy=dense_energy):
        layers[layer] = delta
        if on_layer is not None:
            on_layer(result)
    return Module(
        name=name,
        layers=layers,
        base_model=next((m.base_model for m in modules if m.base_model), None),
        source=None,
        extras=kept,
        meta={
            "merge": {
                "method": method,
                "params": parsed.model_dump(),
                "weights": weights,
                "seed": seed,
            },
            "sources": [m.source or m.name for m in modules],
            "fan_in_fan_out": any(m.meta.get("fan_in_fan_out", False) for m in modules),
        },
    )
