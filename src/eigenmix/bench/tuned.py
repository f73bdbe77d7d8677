"""Tuned entries of the merge benchmark: coefficients learned from a few rows per task.

Every entry starts from a data-free merge at the scale this run chose for it on
validation, learns on ``rows`` training rows per task (:func:`eigenmix.harness.tuning.tune_tasks`:
a seeded draw, labels only for ``sup``, early stopping on the objective's value over the
carved validation rows), and is then tested like every merge. The entries and their
baselines share that data budget:

- ``spectral+tune(…)``: λ per module direction (eigenmix), from the ``spectral`` merge;
  ``sup`` and ``distill`` keep the coefficients of the check with the best validation
  accuracy (``distill``: agreement with the experts, no labels); ``entropy`` adds the
  label-free marginal anchor (``TuneSettings.anchor``) and a stronger pull to the start;
- ``spectral_ls+tune(distill)``, ``spectral_align+tune(distill)``: the same, started from
  a calibrated merge whose statistics come from the same 64 unlabeled rows per task (the
  rows of its ``(n=64)`` entry, at that entry's scale);
- ``adamerging``: one coefficient per module per layer, entropy, from Task Arithmetic
  (AdaMerging's layer-wise variant);
- ``lorahub(n=16)``: one weight per module, CMA-ES on the labeled rows, from Task
  Arithmetic (LoRAHub; no regularisation, 60 evaluations).
"""

from __future__ import annotations

import time

from eigenmix.harness.evaluator import Evaluator, Head
from eigenmix.harness.splits import CarvedTask
from eigenmix.harness.tuning import TuneSpec, tune_tasks
from eigenmix.modules import Module
from eigenmix.tune import TuneSettings


def _spec(objective: str, rows: int, **kw: object) -> TuneSpec:
    settings = {k: kw.pop(k) for k in list(kw) if k in TuneSettings.model_fields}
    return TuneSpec(rows=rows, settings=TuneSettings(objective=objective, **settings), **kw)


# Settings chosen on the validation rows by benchmarks/tune_ablation.py (results/tune_ablation.json).
TUNED: dict[str, TuneSpec] = {
    "spectral+tune(sup,n=16)": _spec("sup", 16, select="accuracy"),
    "spectral+tune(sup,n=64)": _spec("sup", 64, select="accuracy"),
    "spectral+tune(entropy)": _spec("entropy", 64, anchor=1.0, reg=0.1),
    "spectral+tune(distill)": _spec("distill", 64, select="accuracy"),
    "spectral_ls+tune(distill)": _spec("distill", 64, select="accuracy", init="spectral_ls"),
    "spectral_align+tune(distill)": _spec("distill", 64, select="accuracy", init="spectral_align"),
    "adamerging": _spec("entropy", 64, init="task_arithmetic", granularity="layer"),
    "lorahub(n=16)": _spec("sup", 16, init="task_arithmetic", granularity="module", search="cma", reg=0.0),
}


def start_method(name: str) -> str:
    """The data-free merge entry ``name`` starts from (its scale is the one this run chose)."""
    return TUNED[name].init


def run_tuned(
    name: str,
    modules: list[Module],
    tasks: list[CarvedTask],
    heads: dict[str, Head],
    ev: Evaluator,
    scale: float,
    seed: int,
) -> tuple[dict[str, float], dict]:
    """Tune entry ``name`` from ``scale`` and test it; returns (per-task test accuracy, what it did)."""
    spec = TUNED[name].model_copy(update={"scale": scale})
    start = time.perf_counter()
    comp, result = tune_tasks(spec, modules, tasks, heads, ev, seed)
    seconds = time.perf_counter() - start
    try:
        per_task = ev.accuracies(ev.split({t.name: t.task.test for t in tasks}), heads)
    finally:
        comp.detach_hooks()
    info = {
        "spec": spec.model_dump(mode="json"),
        "n_coefficients": result.n_coefficients,
        "tune_seconds": round(seconds, 1),
        "steps": result.steps,
        "best_step": result.best_step,
    }
    return per_task, info
