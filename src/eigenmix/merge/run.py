"""Run a validated merge config: load, check, merge layer by layer, write atomically."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from eigenmix.io import load_task_vector, read_lora_adapter
from eigenmix.io.atomic import atomic_dir, check_destination
from eigenmix.io.merged_output import LayerOutput, stream_merged_adapter, write_extras, write_full_model, write_report
from eigenmix.merge.api import LayerResult, check_compatible, iter_merge, merge, merged_extras
from eigenmix.merge.config import MergeConfig
from eigenmix.modules import AnyDelta, Module


@dataclass(frozen=True)
class MergeRun:
    """What a finished merge reports."""

    out: Path
    layers: list[LayerResult]
    outputs: list[LayerOutput]
    seconds: float


def load_modules(config: MergeConfig) -> list[Module]:
    """Read every input module (adapters directly, fine-tunes as task vectors) and check
    that they fit together."""
    modules = []
    for entry in config.modules:
        name = entry.name or entry.path.name
        if entry.is_adapter:
            modules.append(read_lora_adapter(entry.path, name=name, lazy=True))
        else:
            assert config.base_model is not None  # guaranteed by MergeConfig validation
            modules.append(load_task_vector(config.base_model, entry.path, name=name))
    check_compatible(modules)
    return modules


def run_merge(
    config: MergeConfig,
    out: Path,
    *,
    overwrite: bool = False,
    modules: list[Module] | None = None,
    on_layer: Callable[[LayerResult], None] | None = None,
) -> MergeRun:
    """Merge as ``config`` says and write the result to ``out`` atomically."""
    check_destination(out, overwrite=overwrite)
    start = time.perf_counter()
    modules = modules if modules is not None else load_modules(config)
    results: list[LayerResult] = []

    def record(result: LayerResult) -> None:
        results.append(result)
        if on_layer is not None:
            on_layer(result)

    kwargs = {
        "weights": [e.weight for e in config.modules], "seed": config.seed, "dense_rank": config.dense_rank,
        "dense_energy": config.dense_energy, **config.parameters,
    }  # fmt: skip
    extras = merged_extras(modules, config.extras)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if config.output.kind == "adapter":
            # streamed: each layer is written as soon as it is merged
            names = list(dict.fromkeys(name for m in modules for name in m.layers))
            layers = _reporting(iter_merge(modules, config.method, **kwargs), record)
            outputs = stream_merged_adapter(
                layers, names, tmp, config.output.rank, base_model=modules[0].base_model,
                fan_in_fan_out=any(m.meta.get("fan_in_fan_out", False) for m in modules),
            )  # fmt: skip
            write_extras(extras, tmp)
        else:
            assert config.base_model is not None
            merged = merge(modules, config.method, extras=config.extras, on_layer=record, **kwargs)
            outputs = write_full_model(merged, config.base_model, tmp)
        write_report(tmp, {"config": config.model_dump(mode="json"), "seconds": time.perf_counter() - start}, outputs)
    return MergeRun(out, results, outputs, time.perf_counter() - start)


def _reporting(
    merged: Iterator[tuple[str, AnyDelta, LayerResult]], report: Callable[[LayerResult], None]
) -> Iterator[tuple[str, AnyDelta]]:
    """Pass ``(layer, delta)`` on to the writer, reporting each layer as it is done."""
    for name, delta, result in merged:
        report(result)
        yield name, delta
