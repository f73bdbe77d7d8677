"""Continual composition: the modules arrive one at a time, in seeded orders; after each
arrival every task seen so far is tested. Average accuracy and backward transfer (BWT,
``mean_{i<T} a_{T,i} − a_{i,i}``: how much the later arrivals cost the earlier tasks) for

- the routed library (``Library.add``; the spectral router from the adapters alone, at the
  settings the routing part chose on validation, or its defaults);
- OPCM (``opcm``, its defaults) and the continual ``task_arithmetic`` (λ = 0.3), both folded
  one module at a time from their stored state (:mod:`eigenmix.merging.continual`).

The seconds of one addition are set against redoing that entry with all the modules, and
against re-merging all of them with ``tsv`` (the best static merge of the merge benchmark);
all timings are taken with no other job on the machine.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from eigenmix.bench.compose.passes import routed_pass
from eigenmix.bench.compose.settings import ComposeSettings
from eigenmix.compose import Library
from eigenmix.compose.routers import SpectralRouter
from eigenmix.harness.evaluator import Evaluator, Head, head_accuracies
from eigenmix.harness.splits import CarvedTask
from eigenmix.merging import merge
from eigenmix.merging.continual import MergeState, fold, outputs, start
from eigenmix.modules import Module
from eigenmix.seeds import derived_seed

STATIC = {"opcm": ("opcm", {}), "task_arithmetic (continual)": ("task_arithmetic", {"scale": 0.3})}


def bwt(acc: list[dict[str, float]], order: list[str]) -> float:
    """Backward transfer: mean over every task but the last of (final − just after its arrival)."""
    final = acc[-1]
    return statistics.mean(final[name] - acc[i][name] for i, name in enumerate(order[:-1])) if len(order) > 1 else 0.0


def run_continual(
    settings: ComposeSettings,
    tasks: list[CarvedTask],
    modules: list[Module],
    ev: Evaluator,
    heads: dict[str, Head],
    routers: dict[str, dict],
    console: Console,
) -> dict[str, Any]:
    """Per order and entry: accuracy on the seen tasks after each arrival, BWT, seconds."""
    by_name = {m.name: m for m in modules}
    rows = {t.name: t.task.test[: settings.continual_rows] for t in tasks}
    chosen = {k: v for k, v in routers.get("spectral", {}).get("chosen", {}).items() if k in ("scope", "temperature", "top_k")}
    router = SpectralRouter(calibration="chance", **chosen)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ("routed library (spectral)", *STATIC)}
    for o in range(settings.orders):
        order = [t.name for t in tasks]
        random.Random(derived_seed(settings.bench.seed, f"continual/order{o}")).shuffle(order)
        library, states = Library(), {name: start(method, params) for name, (method, params) in STATIC.items()}
        history: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for t, name in enumerate(order):
            split = ev.split({n: rows[n] for n in order[: t + 1]})
            started = time.perf_counter()
            library.add(by_name[name])
            seconds["routed library (spectral)"].append(time.perf_counter() - started)
            ev.apply(None)
            features, _ = routed_pass(ev, library, router, split)
            history["routed library (spectral)"].append(head_accuracies(features, split, heads))
            for entry in STATIC:
                started = time.perf_counter()
                states[entry] = fold(states[entry], by_name[name])
                seconds[entry].append(time.perf_counter() - started)
                history[entry].append(_static_accuracies(ev, states[entry], split, heads))
            console.print(f"continual order {o}, {t + 1} tasks: " + ", ".join(f"{e} {100 * _mean(h[-1]):.1f}" for e, h in history.items()))
        for entry in runs:
            runs[entry].append({
                "order": order, "accuracy": history[entry], "avg_acc": [_mean(a) for a in history[entry]],
                "bwt": bwt(history[entry], order), "add_seconds": seconds[entry],
            })  # fmt: skip
    redo = _redo_seconds(modules)
    summary = {
        entry: {
            "final_avg_acc": statistics.mean(r["avg_acc"][-1] for r in rs),
            "bwt": statistics.mean(r["bwt"] for r in rs),
            "add_seconds": statistics.mean(s for r in rs for s in r["add_seconds"][1:]),
            "redo_all_seconds": redo[entry],
            "remerge_best_static_seconds": redo["tsv (the best static merge)"],
        }
        for entry, rs in runs.items()
    }
    return {"rows_per_task": settings.continual_rows, "router": chosen, "runs": runs, "summary": summary}


def _mean(acc: dict[str, float]) -> float:
    return sum(acc.values()) / len(acc)


def _static_accuracies(ev: Evaluator, state: MergeState, split: Any, heads: dict[str, Head]) -> dict[str, float]:
    ev.apply({layer: delta.dense().float() for layer, delta in outputs(state)})
    return ev.accuracies(split, heads)


def _redo_seconds(modules: list[Module]) -> dict[str, float]:
    """Seconds to redo each entry with all the modules at once (median of 3)."""

    def timed(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def rebuild() -> None:
        library = Library()
        for m in modules:
            library.add(m)

    return {
        "routed library (spectral)": timed(rebuild),
        "opcm": timed(lambda: merge(modules, "opcm")),
        "task_arithmetic (continual)": timed(lambda: merge(modules, "task_arithmetic", scale=0.3)),
        "tsv (the best static merge)": timed(lambda: merge(modules, "tsv")),
    }
