"""The composition benchmark's protocol: the merge benchmark's adapters, heads and floor
(from the same cache), the individual references, then each part that was asked for."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from eigenmix.bench.compose.settings import ComposeSettings
from eigenmix.bench.runner import ensure_adapters, evaluator, floor_heads, load_bench_tasks
from eigenmix.bench.suites import get_suite
from eigenmix.compose import Library
from eigenmix.errors import InvalidInputError
from eigenmix.harness.evaluator import load_head
from eigenmix.io import read_lora_adapter

SAME = ("suite", "tasks", "seed", "recipe", "kind", "kind_params", "val_rows", "test_rows", "probe_rows")
BEFORE_KINDS = {"kind": "lora", "kind_params": {}}  # what a results.json written before kinds existed ran


def static_entries(paths: list[Path], settings: ComposeSettings) -> dict[str, dict]:
    """The merge benchmark's entries (``results.json`` of ``eigenmix bench merge``) run with
    the same settings, so on the same adapters and rows; anything else is refused."""
    out: dict[str, dict] = {}
    mine = settings.bench.model_dump(mode="json")
    for path in paths:
        file = path / "results.json" if path.is_dir() else path
        try:
            results = json.loads(file.read_text())
            config = results["config"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InvalidInputError(f"{file}: not a results.json of eigenmix bench merge ({err})") from None
        differ = [key for key in SAME if config.get(key, BEFORE_KINDS.get(key)) != mine[key]]
        if differ:
            raise InvalidInputError(f"{file}: its run differs in {', '.join(differ)}; its numbers are not on the same adapters and rows")
        for name, entry in results["methods"].items():
            out[name] = {k: entry[k] for k in ("per_task", "avg_acc", "avg_normalized_acc")} | {"from": str(file)}
    return out


def run_compose(settings: ComposeSettings, data_dir: Path | None, cache_dir: Path, static: list[Path], console: Console) -> dict:
    """Run the parts; returns the ``results.json`` content."""
    start = time.perf_counter()
    tasks = load_bench_tasks(settings.bench, data_dir)
    anchors = static_entries(static, settings)  # fail before any work
    folders = ensure_adapters(tasks, settings.bench, cache_dir, console)
    modules = [read_lora_adapter(folders[t.name], name=t.name) for t in tasks]
    heads = {t.name: load_head(folders[t.name]) for t in tasks}
    ev = evaluator(settings.bench)
    library = Library()
    for module in modules:
        library.add(module)
    individual: dict[str, float] = {}
    for t, module in zip(tasks, modules, strict=True):
        ev.apply({layer: d.dense().float() for layer, d in module.layers.items()})
        individual |= ev.accuracies(ev.split({t.name: t.task.test}), heads)
    probes = floor_heads(tasks, settings.bench, ev, cache_dir, console)
    ev.apply(None)
    floor = ev.accuracies(ev.split({t.name: t.task.test for t in tasks}), probes)
    results: dict = {
        "tasks": [t.name for t in tasks],
        "individual": individual,
        "floor": floor,
        "static": anchors,
        "config": {
            **settings.model_dump(mode="json"),
            "base_model": get_suite(settings.bench.suite).base,
            "data_dir": str(data_dir) if data_dir else "bundled",
        },
    }

    def report(name: str, entry: dict) -> None:
        if "unsupported" in entry:
            console.print(f"{name}: not run, {entry['unsupported']}")
            return
        routed = f", routing {100 * sum(entry['routing_acc'].values()) / len(entry['routing_acc']):.1f}%" if "routing_acc" in entry else ""
        console.print(f"{name}: avg {100 * entry['avg_acc']:.1f}%{routed} ({entry['seconds']:.0f} s) {entry.get('chosen', '')}")

    if "routing" in settings.parts:
        from eigenmix.bench.compose.routing import run_routing

        results["routers"] = run_routing(settings, tasks, library, ev, heads, individual, [str(folders[t.name]) for t in tasks], report)
    if "cost" in settings.parts:
        from eigenmix.bench.compose.cost import run_cost

        results["cost"] = run_cost(settings, tasks, [folders[t.name] for t in tasks], ev, console)
    if "continual" in settings.parts:
        from eigenmix.bench.compose.continual import run_continual

        results["continual"] = run_continual(settings, tasks, modules, ev, heads, results.get("routers", {}), console)
    results["timing"] = {"total_seconds": round(time.perf_counter() - start, 1)}
    return results
