"""The merge pipeline: a validated config → read the modules → the engine, layer by layer
→ a writer, atomically (both outputs streamed: each layer is written as the engine yields
it). One path for the CLI and for Python callers of :func:`run_merge`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from eigenmix.errors import InvalidInputError
from eigenmix.io import CheckpointReader, load_task_vector, read_lora_adapter
from eigenmix.io.atomic import Destination, atomic_dir
from eigenmix.io.full_model import OUT_DTYPES, parse_shard_size, stream_full_model
from eigenmix.io.heads import check_head, has_head, write_heads
from eigenmix.io.merged_output import LayerOutput, stream_merged_adapter, write_extras, write_report
from eigenmix.io.peft_lora import adapter_digest
from eigenmix.io.task_vector import shared_base
from eigenmix.merging.config import MergeConfig
from eigenmix.merging.continual import MergeState, fold, from_merged, load_state, save_state
from eigenmix.merging.engine import LayerResult, check_compatible, merged_extras, run_plan, sequential_state, state_layers
from eigenmix.merging.executor import RayExecutor
from eigenmix.merging.plan import MergePlan
from eigenmix.modules import AnyDelta, Module, modules_work_dtype
from eigenmix.spectral import SVD, default_threads, torch_threads

REPORT = "merge_report.json"  # every merge output holds it: what --force may replace


@dataclass(frozen=True)
class MergeRun:
    """What a finished merge reports."""

    out: Path
    layers: list[LayerResult]
    outputs: list[LayerOutput]
    seconds: float


def load_modules(config: MergeConfig) -> list[Module]:
    """Read every input module (adapters lazily, fine-tunes as task vectors) and check
    that they fit together."""
    modules = []
    base: CheckpointReader | None = None  # one reader of the base for every fine-tune (each base tensor read once)
    for entry in config.modules:
        if entry.is_adapter:
            modules.append(read_lora_adapter(entry.path, name=entry.label, lazy=True))
        else:
            if config.base_model is None:
                raise InvalidInputError(f"{entry.path}: a fine-tune needs 'base_model'")
            if base is None:
                base = CheckpointReader(config.base_model, keep_last=True)
            modules.append(load_task_vector(base, entry.path, name=entry.label))
    for module in modules:
        if not module.layers:
            raise InvalidInputError(f"module {module.name}: no layer to merge (a fine-tune equal to its base model?)")
    check_compatible(modules)
    side_heads(config, check=True)
    return modules


def side_heads(config: MergeConfig, *, check: bool = False) -> dict[str, Path]:
    """The adapters with a head beside them (``eigenmix.train``'s layout): name → folder;
    with ``check``, each head is read and checked (before any work)."""
    heads = {e.label: e.path for e in config.modules if e.is_adapter and has_head(e.path)}
    if heads and config.extras == "refuse":
        name = next(iter(heads))
        raise InvalidInputError(f"module {name} has a head beside it (head.safetensors); use extras 'per_task' to keep it")
    if check:
        for folder in heads.values():
            check_head(folder)
    return heads


def run_merge(
    config: MergeConfig,
    dest: Destination,
    *,
    modules: list[Module] | None = None,
    plan: MergePlan | None = None,
    on_layer: Callable[[LayerResult], None] | None = None,
    report: dict | None = None,
) -> MergeRun:
    """Merge as ``config`` says and write the result to ``dest`` atomically, with
    ``config.threads`` torch threads (default: the cores not already busy; small dense
    algebra always runs on one).

    Args:
        modules: the modules :func:`load_modules` read (default: read here).
        plan: the config's plan as the caller built it, once (``config.plan(source)`` with
            the statistics of a calibrated method,
            :func:`eigenmix.harness.calibration_rows.config_calibration`; default ``config.plan()``).
        on_layer: called after each layer.
        report: more entries for ``merge_report.json``.
    """
    threads = config.threads or default_threads()
    with torch_threads(threads):
        start = time.perf_counter()
        modules = modules if modules is not None else load_modules(config)
        plan = plan if plan is not None else config.plan()
        extras = merged_extras(modules, config.extras)
        heads = side_heads(config)
        results: list[LayerResult] = []

        def record(result: LayerResult) -> None:
            results.append(result)
            if on_layer is not None:
                on_layer(result)

        continual = plan.method.continual
        state = continued_state(config, modules) if config.continue_from is not None else sequential_state(modules, plan)
        dtype = modules_work_dtype(modules)
        executor = None
        if config.executor.kind == "ray":
            if state is not None:
                raise InvalidInputError(f"'{plan.method.name}' folds modules into a stored state; it runs on the local executor")
            executor = RayExecutor(config.executor.address, config.executor.workers, threads=config.threads or 1)
        merged = state_layers(state, dtype) if state is not None else run_plan(modules, plan, executor)
        kept: dict[str, AnyDelta] = {}
        with atomic_dir(dest) as tmp:
            if config.output.kind == "adapter":  # streamed: each layer is written as soon as it is merged
                names = list(state.layers) if state is not None else list(dict.fromkeys(name for m in modules for name in m.layers))
                outputs = stream_merged_adapter(
                    _reporting(merged, record, kept if continual is not None and state is None else None), names, tmp,
                    config.output.rank, base_model=modules[0].base_model, fan_in_fan_out=any(m.fan_in_fan_out for m in modules),
                    dtype=adapter_dtype(modules, config.output.dtype),
                )  # fmt: skip
                write_extras(extras, tmp)
                if continual is not None:  # what a later merge folds more modules into
                    save_state(state or from_merged(plan.method.name, plan.params, [e.label for e in config.modules], plan.weights, kept,
                                                    base_model=modules[0].base_model), tmp)  # fmt: skip
            else:
                if config.base_model is None:
                    raise InvalidInputError("output.kind 'full' needs 'base_model'")
                shapes = {layer: _state_shape(d) for layer, d in state.layers.items()} if state is not None else _shapes(modules)
                out = config.output
                base = shared_base(modules) or config.base_model  # the reader the fine-tunes share reads each layer once
                written = stream_full_model(
                    _reporting(merged, record), shapes, base, tmp, shard_size=parse_shard_size(out.shard_size),
                    dtype=OUT_DTYPES[out.dtype] if out.dtype != "base" else None,
                )  # fmt: skip
                write_extras(extras, tmp)
                outputs = [LayerOutput(layer, min(shapes[layer]), 1.0, min(shapes[layer])) for layer in written]
            write_heads(heads, tmp, config.continue_from)
            digests = {e.label: adapter_digest(e.path) for e in config.modules if e.is_adapter}
            entries = {
                "config": config.model_dump(mode="json"),
                "seconds": time.perf_counter() - start,
                "module_digests": digests,
                "threads": threads,
                **(report or {}),
            }
            write_report(tmp / REPORT, entries, outputs)
        return MergeRun(dest.path, results, outputs, time.perf_counter() - start)


def _reporting(
    merged: Iterator[tuple[str, AnyDelta, LayerResult]], report: Callable[[LayerResult], None], keep: dict[str, AnyDelta] | None = None
) -> Iterator[tuple[str, AnyDelta]]:
    """Pass ``(layer, delta)`` on to the writer, reporting each layer as it is done (and
    keeping the exact deltas in ``keep``, for the state of a continual method)."""
    for name, delta, result in merged:
        report(result)
        if keep is not None:
            keep[name] = delta
        yield name, delta


def adapter_dtype(modules: list[Module], asked: str) -> torch.dtype | None:
    """The dtype of a merged adapter's factors: as asked, or (``base``) the input modules'
    stored dtype where they all share one (bf16 in → bf16 out); else the merge's own."""
    if asked != "base":
        return OUT_DTYPES[asked]
    stored = {d for m in modules for d in m.dtypes()}
    return stored.pop() if len(stored) == 1 else None


def _shapes(modules: list[Module]) -> dict[str, tuple[int, ...]]:
    """Every layer the merge will yield → its shape (from headers for lazily read modules)."""
    out: dict[str, tuple[int, ...]] = {}
    for m in modules:
        out.update(m.shapes())
    return out


def _state_shape(layer: SVD | Tensor) -> tuple[int, ...]:
    return (int(layer.U.shape[0]), int(layer.V.shape[0])) if isinstance(layer, SVD) else tuple(layer.shape)


def continued_state(config: MergeConfig, modules: list[Module]) -> MergeState:
    """The earlier merge's state with ``modules`` folded in, in order (checked first: the
    same method and parameters, new names, the same base model and shapes)."""
    assert config.continue_from is not None
    state = load_state(config.continue_from)
    if state.method != config.method:
        raise InvalidInputError(f"{config.continue_from} is a '{state.method}' merge; this config's method is '{config.method}'")
    if state.parsed.model_dump() != config.parameters.model_dump():
        raise InvalidInputError(
            f"{config.continue_from} was merged with parameters {state.parsed.model_dump()}; "
            f"this config has {config.parameters.model_dump()}"
        )
    for entry, module in zip(config.modules, modules, strict=True):
        state = fold(state, module, entry.weight, entry.label)
    return state
