"""What moves the tuned entries of the merge benchmark: one tuning setting changed at a time.

    python benchmarks/tune_ablation.py --json benchmarks/results/tune_ablation.json \
        --variants sup64,sup64_acc,... [--scale 0.25]

Uses the benchmark's cached adapters and heads (run ``eigenmix bench merge`` first), its
split and its seed. Every variant starts from the ``spectral`` merge at ``--scale`` (the
scale the committed benchmark chose for it on validation) and records the mean normalized
accuracy on the validation rows (the ones early stopping sees, so the choice between
variants is made on them) and on the test rows, the tuning seconds, the steps and the
number of coefficients. Test figures are reported, never used to choose.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console

from bench_common import write_result
from eigenmix.bench.runner import ensure_adapters, load_bench_tasks
from eigenmix.bench.settings import make_settings
from eigenmix.harness.evaluator import Evaluator, load_head
from eigenmix.harness.tuning import TuneSpec, tune_tasks
from eigenmix.io import read_lora_adapter
from eigenmix.tune import TuneSettings


def _v(objective: str = "sup", rows: int = 64, spec: dict | None = None, scale: float = 1.0, **settings: object) -> tuple[TuneSpec, float]:
    """A variant: its spec, and the multiple of ``--scale`` it starts from."""
    return TuneSpec(rows=rows, **(spec or {}), settings=TuneSettings(objective=objective, **settings)), scale  # type: ignore[arg-type]


VARIANTS: dict[str, tuple[TuneSpec, float]] = {
    "sup64": _v(),
    "sup64_acc": _v(select="accuracy"),
    "sup64_mu": _v(spec={"level": "lambda+mu"}),
    "sup64_reg0": _v(reg=0.0),
    "sup64_reg0.1": _v(reg=0.1),
    "sup64_lr0.05": _v(lr=0.05),
    "sup64_full": _v(batch_rows=64, steps=30, eval_every=3, lr=0.04),
    "sup64_acc_x2": _v(select="accuracy", scale=2.0),
    "sup512": _v(rows=512, steps=120, eval_every=10),
    "distill_acc": _v("distill", select="accuracy"),
    "entropy": _v("entropy"),
    "entropy_reg1": _v("entropy", reg=1.0),
    "entropy_layer": _v("entropy", spec={"granularity": "layer"}),
    "entropy_anchor1": _v("entropy", anchor=1.0),
    "entropy_anchor1_reg0.1": _v("entropy", anchor=1.0, reg=0.1),
    "entropy_anchor3": _v("entropy", anchor=3.0),
    "entropy_anchor1_steps150": _v("entropy", anchor=1.0, steps=150),
    "entropy_anchor1_lr0.05": _v("entropy", anchor=1.0, lr=0.05),
    "entropy_anchor1_norm": _v("entropy", anchor=1.0, normalize=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--scale", type=float, default=0.25, help="the starting spectral merge's scale")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "eigenmix")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant '{unknown[0]}' (known: {', '.join(VARIANTS)})")

    start = time.perf_counter()
    settings = make_settings(None)
    tasks = load_bench_tasks(settings, None)
    folders = ensure_adapters(tasks, settings, args.cache_dir, Console(stderr=True))
    modules = [read_lora_adapter(folders[t.name], name=t.name) for t in tasks]
    heads = {t.name: load_head(folders[t.name]) for t in tasks}
    ev = Evaluator(settings.recipe.max_length, settings.tokens_per_batch)
    splits = {"val": ev.tokenize({t.name: t.val for t in tasks}), "test": ev.tokenize({t.name: t.task.test for t in tasks})}
    individual = {part: {} for part in splits}
    for t, module in zip(tasks, modules, strict=True):
        ev.apply({layer: d.dense().float() for layer, d in module.layers.items()})
        for part, rows in (("val", t.val), ("test", t.task.test)):
            individual[part] |= ev.accuracies(ev.tokenize({t.name: rows}), heads)
    ev.apply(None)

    def normalized(part: str) -> tuple[float, dict[str, float]]:
        acc = ev.accuracies(splits[part], heads)
        return sum(acc[n] / individual[part][n] for n in acc) / len(acc), acc

    results = {}
    for name in names:
        spec, multiple = VARIANTS[name]
        spec = spec.model_copy(update={"scale": args.scale * multiple})
        comp, result = tune_tasks(spec, modules, tasks, heads, ev, settings.seed)
        try:
            (val, _), (test, per_task) = normalized("val"), normalized("test")
        finally:
            comp.detach_hooks()
        results[name] = {
            "val_normalized": round(val, 4),
            "test_normalized": round(test, 4),
            "test_per_task": {k: round(v, 4) for k, v in per_task.items()},
            "tune_seconds": round(result.seconds, 1),
            "steps": result.steps,
            "best_step": result.best_step,
            "n_coefficients": result.n_coefficients,
            "history": result.history,
            "spec": spec.model_dump(mode="json"),
        }
        print(f"{name}: val {val:.4f} test {test:.4f} ({result.seconds:.0f} s, best step {result.best_step}/{result.steps})", flush=True)
    write_result(args.json, {"individual": individual, "variants": results, "total_seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
