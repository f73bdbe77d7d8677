"""The protocol: per-task adapters (cached), the individual and floor references, and
every merge method with its scale chosen on validation under one budget.

See ``benchmarks/README.md`` for the protocol in words.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from safetensors.torch import save_file

from eigenmix.bench import tuned
from eigenmix.bench.cache import entry
from eigenmix.bench.probe import fit_probe
from eigenmix.bench.settings import BenchSettings
from eigenmix.bench.suites import get_suite
from eigenmix.harness.evaluator import Evaluator, Head, Split, load_head
from eigenmix.harness.splits import CarvedTask, carve
from eigenmix.inspect import mean_overlap
from eigenmix.io import read_lora_adapter
from eigenmix.io.atomic import atomic_dir
from eigenmix.merging import get_method
from eigenmix.merging import merge as merge_modules
from eigenmix.modules import LowRankDelta, Module


@contextmanager
def _bar(console: Console) -> Iterator[Progress]:
    note = TextColumn("{task.fields[note]}")
    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), note)
    with Progress(*columns, console=console, transient=False) as progress:
        yield progress


def load_bench_tasks(settings: BenchSettings, data_dir: Path | None) -> list[CarvedTask]:
    """Load and check every task of the suite (all errors surface here, before any work)."""
    tasks = get_suite(settings.suite).tasks(settings.tasks, data_dir, settings.seed)
    return [carve(t, settings.val_rows, settings.test_rows, settings.seed) for t in tasks]


def ensure_adapters(tasks: list[CarvedTask], settings: BenchSettings, cache_dir: Path, console: Console) -> dict[str, Path]:
    """Train each task's adapter unless the cache has it; the cache folder of each.

    A kind other than ``lora`` is part of the cache key; an ``orthogonal`` module's key also
    holds the keys of the modules before it (it is trained orthogonal to them, in task order)."""
    from eigenmix.kinds import get_kind

    folders: dict[str, Path] = {}
    suite = get_suite(settings.suite)
    chained = get_kind(settings.kind).needs_library
    params = get_kind(settings.kind).parse_params(settings.kind_params).model_dump()  # the defaults too: a new default retrains
    with _bar(console) as progress:
        for t in tasks:
            key: dict = {"recipe": settings.recipe.model_dump(), "base": suite.base}
            if settings.kind != "lora":  # the LoRA adapters keep the keys they had before kinds existed
                key |= {"kind": settings.kind, "params": params}
            earlier = list(folders.values()) if chained else []
            key |= {"library": [f.name for f in earlier]} if chained else {}
            folder = entry(cache_dir, "adapters", t.task, key)
            folders[t.name] = folder
            if folder.is_dir():
                progress.add_task(f"adapter {t.name}", total=1, completed=1, note="cached")
                continue
            job = progress.add_task(f"training {t.name}", total=settings.recipe.steps, note="")

            def step(_: int, loss: float, job: TaskID = job) -> None:
                progress.update(job, advance=1, note=f"loss {loss:.3f}")

            library = [read_lora_adapter(f) for f in earlier]
            suite.train(t.task, settings.recipe, folder, step, settings.kind, params=settings.kind_params, library=library)
    return folders


def floor_heads(tasks: list[CarvedTask], settings: BenchSettings, ev: Evaluator, cache_dir: Path, console: Console) -> dict[str, Head]:
    """A linear probe per task on the frozen base model (cached like the adapters)."""
    heads = {}
    suite = get_suite(settings.suite)
    ev.apply(None)
    with _bar(console) as progress:
        for t in tasks:
            rows = t.task.train[: settings.probe_rows]
            probe_settings = {"rows": settings.probe_rows, **suite.input_key(settings.recipe), "base": suite.base}
            folder = entry(cache_dir, "probes", t.task, probe_settings)
            job = progress.add_task(f"probe {t.name}", total=1, note=f"{len(rows)} rows" if not folder.is_dir() else "cached")
            if not folder.is_dir():
                head = fit_probe(ev.features(ev.split({t.name: rows})), torch.tensor([r.label for r in rows]), t.task.num_labels)
                with atomic_dir(folder) as tmp:
                    save_file({"weight": head.weight.contiguous(), "bias": head.bias.contiguous()}, str(tmp / "head.safetensors"))
            progress.update(job, advance=1)
            heads[t.name] = load_head(folder)
    return heads


def _trained(meta: dict, module: Module) -> int:
    """The trained parameters of a module besides its head: as its trainer recorded them
    (the kinds), else its LoRA factors (PEFT's trainer: every factor is trained)."""
    recorded = meta.get("trained_parameters", meta.get("recipe", {}).get("trained_parameters"))
    if recorded is not None:
        return int(recorded)
    return sum(d.A.numel() + d.B.numel() for d in module.layers.values() if isinstance(d, LowRankDelta))


def _dense(module: Module) -> dict[str, torch.Tensor]:
    return {layer: delta.dense().float() for layer, delta in module.layers.items()}


def run_benchmark(settings: BenchSettings, data_dir: Path | None, cache_dir: Path, console: Console) -> dict:
    """Run the whole protocol; returns the ``results.json`` content."""
    start = time.perf_counter()
    tasks = load_bench_tasks(settings, data_dir)
    for method in settings.methods:
        get_method(method).parse_params(settings.method_params.get(method, {}))  # fail before any training
    folders = ensure_adapters(tasks, settings, cache_dir, console)
    train_meta = {name: json.loads((f / "head.json").read_text()) for name, f in folders.items()}
    modules = [read_lora_adapter(folders[t.name], name=t.name) for t in tasks]
    heads = {t.name: load_head(folders[t.name]) for t in tasks}

    eval_start = time.perf_counter()
    ev = evaluator(settings)
    val = ev.split({t.name: t.val for t in tasks})
    test = ev.split({t.name: t.task.test for t in tasks})

    individual: dict[str, float] = {}
    for t, module in zip(tasks, modules, strict=True):
        ev.apply(_dense(module))
        individual |= ev.accuracies(ev.split({t.name: t.task.test}), heads)
    probes = floor_heads(tasks, settings, ev, cache_dir, console)
    ev.apply(None)
    floor = ev.accuracies(test, probes)

    methods = {}
    with _bar(console) as progress:
        for method in settings.methods:
            for entry_name, rows in entries(method, settings):
                job = progress.add_task(entry_name, total=len(settings.scale_grid) + len(settings.refine) + 1, note="merging")
                methods[entry_name] = _run_method(method, modules, tasks, settings, ev, heads, val, test, individual, progress, job, rows)
        for name in settings.tuned:
            job = progress.add_task(name, total=1, note="tuning")
            methods[name] = _run_tuned(name, modules, tasks, settings, ev, heads, individual, methods)
            progress.update(job, advance=1, note=f"test {methods[name]['avg_acc']:.3f} in {methods[name]['tune_seconds']:.0f} s")
    return {
        "tasks": [t.name for t in tasks],
        "individual": individual,
        "floor": floor,
        "methods": methods,
        "overlap": mean_overlap(modules),
        "trained_parameters": {m.name: _trained(train_meta[m.name], m) for m in modules},
        "config": {
            **settings.model_dump(mode="json"),
            "data_dir": str(data_dir) if data_dir else "bundled",
            "base_model": get_suite(settings.suite).base,
            "train_rows": {t.name: len(t.task.train) for t in tasks},
            "test_rows_used": {t.name: len(t.task.test) for t in tasks},
        },
        "timing": {
            "train_seconds": {name: meta["train_seconds"] for name, meta in train_meta.items()},
            "evaluation_seconds": round(time.perf_counter() - eval_start, 1),
            "total_seconds": round(time.perf_counter() - start, 1),
        },
    }


def evaluator(settings: BenchSettings) -> Evaluator:
    """The suite's base model, frozen, with its inputs."""
    return get_suite(settings.suite).evaluator(settings.recipe, settings.tokens_per_batch)


def entries(method: str, settings: BenchSettings) -> list[tuple[str, int | None]]:
    """The entries of a method: itself, or one per calibration size (``method(n=…)``)."""
    if get_method(method).calibration is None:
        return [(method, None)]
    return [(f"{method}(n={n})", n) for n in settings.calibration_rows]


def calibration(method: str, modules: list[Module], tasks: list[CarvedTask], settings: BenchSettings, ev: Evaluator, rows: int):
    """The statistics of a calibrated entry: ``rows`` unlabeled training rows per task, drawn
    as the tuned entries draw theirs (never validation or test rows; labels never read)."""
    from eigenmix.harness.calibration_rows import calibration_source
    from eigenmix.harness.tuning import draw

    kind = get_method(method).calibration
    assert kind is not None
    batches = [ev.batches(draw(t.task.train, rows, settings.seed), 16) for t in tasks]
    ev.apply(None)  # statistics of the base model with each module hooked on
    return calibration_source(kind, ev.encoder, modules, batches)


def _run_tuned(
    name: str,
    modules: list[Module],
    tasks: list[CarvedTask],
    settings: BenchSettings,
    ev: Evaluator,
    heads: dict[str, Head],
    individual: dict[str, float],
    methods: dict[str, dict],
) -> dict:
    """A tuned entry, started at the scale this run chose for its data-free merge."""
    init = tuned.start_method(name)
    entry = methods.get(init) or methods.get(f"{init}(n={tuned.TUNED[name].rows})")  # a calibrated start: its entry on the same rows
    scale = entry["chosen_params"]["scale"] if entry is not None else get_method(init).parse_params({}).scale
    per_task, info = tuned.run_tuned(name, modules, tasks, heads, ev, scale, settings.seed)
    return {
        "per_task": per_task,
        "avg_acc": sum(per_task.values()) / len(per_task),
        "avg_normalized_acc": sum(per_task[n] / individual[n] for n in per_task) / len(per_task),
        "merge_seconds": info["tune_seconds"],
        "tune_seconds": info["tune_seconds"],
        "n_coefficients": info["n_coefficients"],
        "chosen_params": {"scale": scale, **info},
    }


def _run_method(
    method: str,
    modules: list[Module],
    tasks: list[CarvedTask],
    settings: BenchSettings,
    ev: Evaluator,
    heads: dict[str, Head],
    val: Split,
    test: Split,
    individual: dict[str, float],
    progress: Progress,
    job: TaskID,
    rows: int | None = None,
) -> dict:
    """Merge once at scale 1 (every method is linear in its scale), pick the scale with the
    best mean validation accuracy (coarse multiples of the default, then refinements around
    the best; ties: nearest the default), then test. A calibrated method gets ``rows``
    unlabeled rows per task (:func:`calibration`)."""
    spec = get_method(method)
    params = spec.parse_params(settings.method_params.get(method, {}))
    default = params.scale
    merge_start = time.perf_counter()
    source = calibration(method, modules, tasks, settings, ev, rows) if rows is not None else None
    merged = merge_modules(modules, method, seed=settings.seed, calibration=source, **{**params.model_dump(), "scale": 1.0})
    merge_seconds = time.perf_counter() - merge_start
    timing = {}
    if source is not None:
        statistics = float(getattr(source, "seconds", 0.0))
        solve = merge_seconds - statistics
        timing = {"calibration_seconds": round(statistics, 2), "solve_seconds": round(solve, 2), "calibration_rows": rows}
    deltas = _dense(merged)
    search: dict[float, float] = {}

    def score(scale: float) -> None:
        scale = round(scale, 6)
        if scale not in search:
            ev.apply(deltas, scale)
            search[scale] = sum(ev.accuracies(val, heads).values()) / len(tasks)
        progress.update(job, advance=1, note=f"scale {scale:g}: val {search[scale]:.3f}")

    def rank(scale: float) -> tuple[float, float]:  # best validation accuracy, then nearest the default
        return search[scale], -abs(math.log(scale / default))

    for multiple in settings.scale_grid:
        score(default * multiple)
    coarse = max(search, key=rank)
    for factor in settings.refine:
        score(coarse * factor)
    best = max(search, key=rank)
    ev.apply(deltas, best)
    per_task = ev.accuracies(test, heads)
    progress.update(job, advance=1, note=f"scale {best:g}: test {sum(per_task.values()) / len(per_task):.3f}")
    return {
        "per_task": per_task,
        "avg_acc": sum(per_task.values()) / len(per_task),
        "avg_normalized_acc": sum(per_task[n] / individual[n] for n in per_task) / len(per_task),
        "merge_seconds": round(merge_seconds, 3),
        **timing,
        "chosen_params": {**params.model_dump(mode="json"), "scale": best},
        "validation": {f"{s:g}": acc for s, acc in search.items()},
    }
