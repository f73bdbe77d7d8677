"""The calibrated methods' settings, chosen on validation rows only.

    python benchmarks/calibrated_ablation.py --json benchmarks/results/calibrated_ablation.json [--rows 64]

Uses the merge benchmark's cached adapters and heads (run ``eigenmix bench merge`` first),
its split, its seed and its scale search. Each variant (one setting of one method) is
merged from ``--rows`` unlabeled training rows per task (the benchmark's draw), its scale
is chosen on the validation rows like every method's, and the best mean validation
accuracy (normalized by the individual adapters on validation) is recorded. Test rows are
never read: the defaults of ``regmean`` (α), ``spectral_ls`` (ridge) and ``spectral_align``
(β) are the variants with the best validation figure.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from rich.console import Console

from bench_common import write_result
from eigenmix.bench.runner import _dense, calibration, ensure_adapters, load_bench_tasks
from eigenmix.bench.settings import make_settings
from eigenmix.harness.evaluator import Evaluator, load_head
from eigenmix.io import read_lora_adapter
from eigenmix.merging import get_method, merge

# A variant without α in its name ran at α = 0.9, the default when the committed file was
# made; "inputs" runs a method on the statistics of the other kind (spectral_align on the
# merged model's, as RegMean++ takes them, or on each model's own).
VARIANTS: dict[str, tuple[str, dict]] = {
    "regmean(alpha=0.5)": ("regmean", {"alpha": 0.5}),
    "regmean(alpha=0.9)": ("regmean", {"alpha": 0.9}),
    "regmean(alpha=1)": ("regmean", {"alpha": 1.0}),
    "regmean_pp(alpha=0.9)": ("regmean_pp", {"alpha": 0.9}),
    "lot": ("lot", {}),
    "spectral_ls(ridge=0)": ("spectral_ls", {"ridge": 0.0}),
    "spectral_ls(ridge=0.01)": ("spectral_ls", {"ridge": 0.01}),
    "spectral_ls(ridge=0.1)": ("spectral_ls", {"ridge": 0.1}),
    "spectral_ls(ridge=1)": ("spectral_ls", {"ridge": 1.0}),
    "spectral_align(beta=0.1)": ("spectral_align", {"alpha": 0.9, "flatten": 0.1, "inputs": "merged"}),
    "spectral_align(beta=0.25)": ("spectral_align", {"alpha": 0.9, "flatten": 0.25, "inputs": "merged"}),
    "spectral_align(beta=0.5)": ("spectral_align", {"alpha": 0.9, "flatten": 0.5, "inputs": "merged"}),
    "spectral_align(beta=1)": ("spectral_align", {"alpha": 0.9, "flatten": 1.0, "inputs": "merged"}),
    "spectral_align(alpha=0.5,beta=0.25)": ("spectral_align", {"alpha": 0.5, "flatten": 0.25, "inputs": "merged"}),
    "spectral_align(alpha=1,beta=0.25)": ("spectral_align", {"alpha": 1.0, "flatten": 0.25, "inputs": "merged"}),
    # the same rule on each model's own inputs (RegMean's statistics) instead of RegMean++'s
    "spectral_align(own,beta=0.1)": ("spectral_align", {"alpha": 0.9, "flatten": 0.1, "inputs": "own"}),
    "spectral_align(own,beta=0.25)": ("spectral_align", {"alpha": 0.9, "flatten": 0.25, "inputs": "own"}),
    "spectral_align(own,alpha=1,beta=0.25)": ("spectral_align", {"alpha": 1.0, "flatten": 0.25, "inputs": "own"}),
    "spectral_align(own,beta=0.5)": ("spectral_align", {"alpha": 0.9, "flatten": 0.5, "inputs": "own"}),
    "spectral_ls(ridge=10)": ("spectral_ls", {"ridge": 10.0}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--variants", default=";".join(VARIANTS), help="names separated by ';' (names hold commas)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    settings = make_settings(None)
    tasks = load_bench_tasks(settings, None)
    from eigenmix.bench.cache import default_cache_dir

    folders = ensure_adapters(tasks, settings, default_cache_dir(), console)
    modules = [read_lora_adapter(folders[t.name], name=t.name) for t in tasks]
    heads = {t.name: load_head(folders[t.name]) for t in tasks}
    ev = Evaluator(settings.recipe.max_length, settings.tokens_per_batch)
    val = ev.tokenize({t.name: t.val for t in tasks})
    individual = {}
    for t, module in zip(tasks, modules, strict=True):
        ev.apply(_dense(module))
        individual |= ev.accuracies(ev.tokenize({t.name: t.val}), heads)

    def normalized(scale: float, deltas: dict) -> float:
        ev.apply(deltas, scale)
        acc = ev.accuracies(val, heads)
        return sum(acc[n] / max(individual[n], 1e-9) for n in acc) / len(acc)

    results = {}
    for name in args.variants.split(";"):
        method, params = VARIANTS[name]
        params = dict(params)
        inputs = params.pop("inputs", None)
        start = time.perf_counter()
        kind = get_method(method).calibration
        statistics = {"own": "regmean", "merged": "regmean_pp"}[inputs] if inputs else method
        source = calibration(statistics, modules, tasks, settings, ev, args.rows)
        source.kind = kind  # type: ignore[misc]  # an experiment: the method's rule on statistics of the named inputs
        merged = merge(modules, method, calibration=source, **{**params, "scale": 1.0})
        seconds = time.perf_counter() - start
        deltas = _dense(merged)
        default = get_method(method).parse_params(params).scale
        search = {round(default * m, 6): normalized(default * m, deltas) for m in settings.scale_grid}
        coarse = max(search, key=lambda s: (search[s], -abs(math.log(s / default))))
        search |= {round(coarse * f, 6): normalized(coarse * f, deltas) for f in settings.refine}
        best = max(search, key=lambda s: (search[s], -abs(math.log(s / default))))
        results[name] = {"method": method, "params": params, "val_normalized": search[best], "scale": best,
                         "validation": {f"{s:g}": v for s, v in search.items()}, "merge_seconds": round(seconds, 1)}  # fmt: skip
        console.print(f"{name}: validation {100 * search[best]:.2f} at scale {best:g} ({seconds:.0f} s)")
        command = " ".join(["python", "benchmarks/calibrated_ablation.py", "--json", str(args.json), "--rows", str(args.rows)])
        write_result(args.json, {"rows": args.rows, "individual_val": individual, "variants": results, "command": command})


if __name__ == "__main__":
    main()
