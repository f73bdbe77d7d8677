"""The one merge engine: a plan applied layer by layer.

Per layer, a spectral method gets the joint-basis decomposition of the K deltas
(:func:`eigenmix.modules.layer_spectra`) and returns a factored result; an element-wise
method gets the K dense deltas of that one layer. Every tensor is classified by what it is
(:func:`eigenmix.modules.tensor_kind`): matrices, and conv kernels as their matrix view
``(out, in/g·∏k)`` (the merged delta keeps the kernel's shape for the writers), go to the
method; vectors (biases, norms) follow the method's declared vector rule
(:mod:`eigenmix.merging.registry`).
Methods with ``trim: global`` first make one pass over every layer for each module's
magnitude threshold (:mod:`eigenmix.merging.selection`).

:func:`iter_merge` yields the layers one at a time (the CLI streams them to disk);
:func:`merge` collects the same iterator into a module, so the two cannot differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from eigenmix.errors import InvalidInputError, NonFiniteError, ShapeMismatchError
from eigenmix.io.safetensors_io import all_finite
from eigenmix.merging.continual import MergeState, fold_all, outputs
from eigenmix.merging.elementwise import weighted
from eigenmix.merging.plan import Executor, MergePlan, make_plan
from eigenmix.merging.registry import LayerContext
from eigenmix.merging.selection import global_thresholds
from eigenmix.modules import (
    AnyDelta,
    DenseDelta,
    MergeRecord,
    Module,
    SpectralDelta,
    layer_spectra,
    modules_work_dtype,
    with_kernel,
    work_dtype,
)
from eigenmix.seeds import derived_seed


@dataclass(frozen=True)
class LayerResult:
    """What one layer's merge produced, for tables and reports."""

    layer: str
    shape: tuple[int, ...]
    rank: int
    seconds: float


@dataclass(frozen=True)
class LayerInput:
    """One layer's members: the deltas of the modules that have it, their weights and indices."""

    layer: str
    deltas: list[AnyDelta]
    weights: list[float]
    members: list[int]

    @property
    def is_matrix(self) -> bool:
        """A matrix, or a conv kernel (the deltas hold its matrix view)."""
        return len(self.deltas[0].shape) == 2

    @property
    def kernel(self) -> tuple[int, ...] | None:
        """The conv kernel shape of the layer (None for a matrix or a vector)."""
        return getattr(self.deltas[0], "kernel", None)


def layer_inputs(
    modules: Sequence[Module], weights: Sequence[float], order: Callable[[Sequence[str]], list[str]] | None = None
) -> Iterator[LayerInput]:
    """Every layer in first-seen order (or as ``order`` sorts them), over the modules that
    have it (lazily read layers are read here, one layer at a time)."""
    names = list(dict.fromkeys(name for m in modules for name in m.layers))
    for layer in order(names) if order is not None else names:
        members = [i for i, m in enumerate(modules) if layer in m.layers]
        yield LayerInput(layer, [modules[i].layers[layer] for i in members], [weights[i] for i in members], members)


def method_inputs(plan: MergePlan, item: LayerInput) -> tuple[Any, ...]:
    """The arguments a layer's method function takes before its parameters: the stacked
    dense deltas and weights (element-wise methods, and every method's vectors), or the
    layer's joint-basis decomposition (spectral methods' matrices)."""
    if plan.method.kind == "elementwise" or not item.is_matrix:
        dtype = work_dtype(item.deltas)  # float32 (float64 for float64 inputs): element-wise maths needs no more
        stacked = torch.empty((len(item.deltas), *item.deltas[0].shape), dtype=dtype)  # (K, *shape): this layer only
        for k, d in enumerate(item.deltas):  # one read at a time
            stacked[k] = d.dense()
        return stacked, torch.tensor(item.weights, dtype=dtype)
    seed = derived_seed(plan.seed, item.layer)
    return (layer_spectra(item.deltas, item.weights, dense_rank=plan.dense_rank, dense_energy=plan.dense_energy, seed=seed),)


def context(plan: MergePlan, item: LayerInput, thresholds: Tensor | None = None) -> LayerContext:
    """The layer's context: its own seeded generator (the same in every pass), and its
    calibration statistics where the method needs them (matrix layers only)."""
    grams = plan.calibration.layer(item.layer, item.members) if plan.calibration is not None and item.is_matrix else None
    if grams is not None:
        grams.check(item.layer, int(item.deltas[0].shape[1]))
    return LayerContext(torch.Generator().manual_seed(derived_seed(plan.seed, item.layer)), thresholds, grams)


def merge_layer(plan: MergePlan, item: LayerInput, thresholds: Tensor | None = None) -> AnyDelta:
    """Merge one layer's deltas as ``plan`` says; a result that is not finite is an error."""
    if plan.method.sequential:
        raise InvalidInputError(f"'{plan.method.name}' is sequential: it merges whole modules in order (merge, iter_merge), not one layer")
    dtype, p = work_dtype(item.deltas), plan.params
    rule = plan.method.vector_rule(p)
    if plan.method.linear_map and all(isinstance(d, DenseDelta) for d in item.deltas):  # dense task vectors: no SVD
        summed = DenseDelta(linear_combination(item, rule, p.scale, dtype), item.kernel)
        _check_finite(item.layer, summed)
        return summed
    ctx = context(plan, item, thresholds)
    inputs = method_inputs(plan, item)
    if plan.method.kind == "elementwise" or (not item.is_matrix and rule == "method"):
        out: AnyDelta = DenseDelta(plan.method.fn(*inputs, p, ctx).to(dtype))
    elif not item.is_matrix:
        stacked, w = inputs
        divisor = vector_divisor(rule, item.weights)
        out = DenseDelta((p.scale * weighted(stacked, w).sum(0) / divisor).to(dtype))
    else:
        result = plan.method.fn(*inputs, p, ctx)
        out = SpectralDelta(result.U.to(dtype), result.S.to(dtype), result.V.to(dtype))
    out = with_kernel(out, item.kernel)
    _check_finite(item.layer, out)
    return out


def vector_divisor(rule: str, weights: Sequence[float]) -> float:
    """What a vector rule divides the weighted sum by: 1 (sum), K (mean) or ``Σ w`` (weighted mean)."""
    return {"sum": 1.0, "mean": float(len(weights)), "weighted_mean": float(sum(weights))}[rule]


def linear_combination(item: LayerInput, rule: str, scale: float, dtype: torch.dtype) -> Tensor:
    """``scale · Σ_k w_k ΔW_k`` (divided as ``rule`` says), accumulated one delta at a time in
    ``dtype`` (float32 unless an input is float64): the sum and one delta in memory (a
    :class:`ReadDelta` is read here, once)."""
    total = torch.zeros(item.deltas[0].shape, dtype=dtype)
    for delta, weight in zip(item.deltas, item.weights, strict=True):
        total.add_(delta.dense(), alpha=weight)
    divisor = vector_divisor(rule, item.weights)
    return total.mul_(scale / divisor)


def _check_finite(layer: str, delta: AnyDelta) -> None:
    tensors = (delta.U, delta.S, delta.V) if isinstance(delta, SpectralDelta) else (delta.dense(),)
    if not all(all_finite(t) for t in tensors):
        raise NonFiniteError(f"layer '{layer}': the merged delta is not finite in {tensors[0].dtype} (a weight or scale too large?)")


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


def run_plan(modules: Sequence[Module], plan: MergePlan, executor: Executor | None = None) -> Iterator[tuple[str, AnyDelta, LayerResult]]:
    """Merge ``modules`` as ``plan`` says, yielding ``(layer, delta, LayerResult)`` per layer
    (the modules must fit together: :func:`check_compatible`); ``executor`` runs the layers
    elsewhere (Ray tasks), with the same results, in the same order."""
    if plan.method.sequential and executor is not None:
        raise InvalidInputError(f"'{plan.method.name}' folds whole modules in order; it runs on the local executor")
    folding = time.perf_counter()
    state = sequential_state(modules, plan)
    if state is not None:
        yield from state_layers(state, modules_work_dtype(modules), time.perf_counter() - folding)
        return
    thresholds = None
    if plan.method.trims_globally(plan.params):
        thresholds = global_thresholds(lambda: _trim_values(modules, plan), len(modules), plan)
    if executor is not None:
        names = list(dict.fromkeys(name for m in modules for name in m.layers))
        for layer, delta, seconds in executor.run(modules, plan, names, thresholds):
            rank = delta.rank if isinstance(delta, SpectralDelta) else min(delta.shape) if len(delta.shape) == 2 else 0
            yield layer, delta, LayerResult(layer, tuple(delta.shape), rank, seconds)
        return
    source = plan.calibration
    if source is not None:
        source.reset()  # a source that follows the merge starts from the base model
    for item in layer_inputs(modules, plan.weights, source.order if source is not None else None):
        start = time.perf_counter()
        delta = merge_layer(plan, item, None if thresholds is None else thresholds[item.members])
        if source is not None and isinstance(delta, SpectralDelta):  # the merge at scale 1 (scale stays a multiplier)
            source.merged(item.layer, SpectralDelta(delta.U, delta.S / plan.params.scale, delta.V))
        rank = delta.rank if isinstance(delta, SpectralDelta) else min(delta.shape) if len(delta.shape) == 2 else 0
        yield item.layer, delta, LayerResult(item.layer, tuple(delta.shape), rank, time.perf_counter() - start)


def sequential_state(modules: Sequence[Module], plan: MergePlan) -> MergeState | None:
    """The merge of a sequential method (OPCM): ``modules`` folded in, in order, from an empty
    state (the one place that does it); None for a method that merges layer by layer."""
    return fold_all(modules, plan.method.name, plan.params, plan.weights) if plan.method.sequential else None


def state_layers(state: MergeState, dtype: torch.dtype, seconds: float = 0.0) -> Iterator[tuple[str, AnyDelta, LayerResult]]:
    """The layers a continual merge state writes (:func:`eigenmix.merging.continual.outputs`),
    in ``dtype`` and checked to be finite."""
    per_layer = seconds / max(len(state.layers), 1)
    for layer, delta in outputs(state):
        out: AnyDelta
        if isinstance(delta, SpectralDelta):
            out = SpectralDelta(delta.U.to(dtype), delta.S.to(dtype), delta.V.to(dtype))
        else:
            out = DenseDelta(delta.dense().to(dtype))
        out = with_kernel(out, getattr(delta, "kernel", None))
        _check_finite(layer, out)
        rank = out.rank if isinstance(out, SpectralDelta) else min(out.shape) if len(out.shape) == 2 else 0
        yield layer, out, LayerResult(layer, tuple(out.shape), rank, per_layer)


def _trim_values(modules: Sequence[Module], plan: MergePlan) -> Iterator[tuple[int, Tensor]]:
    """``(module index, values)`` of every layer the method's function trims, for the first
    pass of ``trim: global``."""
    assert plan.method.trim_values is not None  # trims_globally checked it
    for item in layer_inputs(modules, plan.weights):
        if item.is_matrix or plan.method.kind == "elementwise" or plan.method.vector_rule(plan.params) == "method":
            values = plan.method.trim_values(*method_inputs(plan, item), plan.params, context(plan, item))
            yield from zip(item.members, values, strict=True)


def iter_merge(
    modules: Sequence[Module],
    method: str,
    *,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    dense_rank: int | None = None,
    dense_energy: float = 1.0,
    calibration: object = None,
    **params: Any,
) -> Iterator[tuple[str, AnyDelta, LayerResult]]:
    """Merge layer by layer, yielding ``(layer, merged delta, LayerResult)`` as each layer
    is done, so a writer can stream the output; arguments as for :func:`merge`.

    All checks (method, parameters, weights, shapes, base models) run before the first
    layer is merged.
    """
    plan = make_plan(
        method, len(modules), weights=weights, params=params, seed=seed, dense_rank=dense_rank, dense_energy=dense_energy,
        calibration=calibration,
    )  # fmt: skip
    check_compatible(modules)
    return run_plan(modules, plan)


def merged_extras(modules: Sequence[Module], policy: Literal["per_task", "refuse"]) -> dict[str, Tensor]:
    """The inputs' non-delta tensors, kept per task as ``"{module}/{name}"``; with
    ``"refuse"``, an error if any module has some."""
    if policy == "refuse" and any(m.extras for m in modules):
        holder = next(m for m in modules if m.extras)
        raise InvalidInputError(
            f"module {holder.name} carries non-delta tensors ({', '.join(sorted(holder.extras)[:3])}); "
            "a merge cannot combine them: use extras 'per_task' to keep each module's copy"
        )
    return {f"{m.name}/{k}": t for m in modules for k, t in m.extras.items()}


def collect(
    modules: Sequence[Module],
    plan: MergePlan,
    *,
    extras: Literal["per_task", "refuse"] = "per_task",
    name: str = "merged",
    on_layer: Callable[[LayerResult], None] | None = None,
) -> Module:
    """:func:`run_plan` collected into one module (with the inputs' extras and a record of the plan)."""
    check_compatible(modules)
    kept = merged_extras(modules, extras)
    layers: dict[str, AnyDelta] = {}
    for layer, delta, result in run_plan(modules, plan):
        layers[layer] = delta
        if on_layer is not None:
            on_layer(result)
    record = MergeRecord(plan.method.name, plan.params.model_dump(), plan.weights, plan.seed, tuple(m.source or m.name for m in modules))
    return Module(
        name=name,
        layers=layers,
        base_model=next((m.base_model for m in modules if m.base_model), None),
        extras=kept,
        fan_in_fan_out=any(m.fan_in_fan_out for m in modules),
        merged=record,
    )


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
    calibration: object = None,
    **params: Any,
) -> Module:
    """Merge ``modules`` layer by layer with a registered ``method``.

    Args:
        modules: K modules of one base model. A layer some modules lack is merged over
            the modules that have it; one module is merged like several (its deltas times
            ``scale``, trimmed or dropped as the method says).
        method: a registered name (see ``eigenmix methods``).
        weights: per-module weights (default 1 each; finite, not all zero).
        seed: seeds the random methods, per layer (bit-identical re-runs).
        dense_rank: dense task vectors are decomposed by a randomized SVD to this rank
            for spectral methods (exact SVD when None).
        dense_energy: share of each dense delta's energy kept for spectral methods.
        extras: ``"per_task"`` keeps each module's non-delta tensors (heads) under
            ``"{module}/{name}"``; ``"refuse"`` raises if any module has some.
        on_layer: called after each layer (progress bars, tables).
        calibration: the layer-input statistics of a calibrated method (``regmean``,
            ``regmean_pp``, ``lot``, ``spectral_ls``, ``spectral_align``): fixed
            :class:`~eigenmix.merging.statistics.Grams` (your own tensors, or
            :func:`eigenmix.compose.gram_statistics` of a model and rows), or
            :class:`eigenmix.compose.MergedGrams` for the methods that follow the merge.
        **params: the method's parameters (validated; unknown names are errors).

    Returns:
        The merged module: spectral deltas for spectral methods, dense ones otherwise.

    Raises:
        InvalidInputError: a bad method, parameter, weight or module set (before any work).
        NonFiniteError: a merged layer that is not finite.
    """
    plan = make_plan(
        method, len(modules), weights=weights, params=params, seed=seed, dense_rank=dense_rank, dense_energy=dense_energy,
        calibration=calibration,
    )  # fmt: skip
    return collect(modules, plan, extras=extras, name=name, on_layer=on_layer)
