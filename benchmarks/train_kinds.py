"""Modules of every training kind through the benchmark's protocol (issue 26).

For each kind, the installed script runs ``eigenmix bench merge --kind K`` (each module's
own accuracy, the merges of ``METHODS`` with their scales chosen on validation,
the modules' mean overlap and trained parameters) and ``eigenmix bench compose --kind K
--parts routing`` (every router). ``orthogonal`` runs in ``--orders`` arrival orders: the
listed one, then seeded permutations (each module is trained orthogonal to the ones that
arrived before it; the routers run on the first order only). One JSON and one Markdown table
gather them; each run keeps its own ``results.json`` under ``--out``.

    .venv/bin/python benchmarks/train_kinds.py --quick --out benchmarks/results/train_kinds
    .venv/bin/python benchmarks/train_kinds.py --suite vision --out benchmarks/results/train_kinds_vision

``--quick`` is the text benchmark's quick size (50 steps, 24 validation and 120 test rows per
task); without it, the full recipe (400 steps, 500 test rows: about an hour of training per
kind on 2 cores). ``--suite vision`` runs ``eigenmix bench vision --parts merge,routing`` on the
vision suite's 4 tasks (conv modules of EfficientNet-Lite0, 200 steps at 64 px; its ``--quick``
is a 2-task smoke run at 32 px).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench_common import write_result

TASKS = {"text": "sst2,ag_news,trec,sms_spam,subj,emotion,cola,mrpc", "vision": "fashion_tops,fashion_rest,digits_low,digits_high"}
KINDS = "lora,orthogonal,svf,pissa,spectral_adapter"
# The merges of the table: the strongest data-free methods of the text benchmark and two
# calibrated ones on 64 rows per task (every method would triple the evaluation time).
METHODS = "task_arithmetic,ties,tsv,iso_c,spectral,regmean,spectral_align"
CALIBRATION_ROWS = "64"
CALIBRATED = ("regmean", "regmean_pp", "spectral_align")


def orders(tasks: list[str], count: int) -> list[list[str]]:
    """The listed order, then ``count - 1`` permutations seeded 1, 2, …"""
    permuted = [[tasks[i] for i in torch.randperm(len(tasks), generator=torch.Generator().manual_seed(s))] for s in range(1, count)]
    return [tasks, *permuted]


def bench(command: str, kind: str, tasks: list[str], out: Path, args: argparse.Namespace, routers: bool, every: bool = False) -> None:
    """One run of ``eigenmix bench COMMAND`` through the installed script, its results under
    ``out/merge`` and (``routers``) ``out/compose`` (skipped when they exist); ``every``: every
    registered merge method (at the default calibration sizes) instead of ``METHODS``."""
    merges = [] if every else ["--methods", METHODS, "--calibration-rows", CALIBRATION_ROWS]
    if command == "vision":  # one call writes both parts' folders (atomically: summary.json last)
        parts = ["--parts", "merge,routing" if routers else "merge", "--tuned", "none"]
        runs = [] if (out / "summary.json").is_file() else [(out, [*parts, *merges])]
    else:
        runs = [(out / "merge", merges)] + ([(out / "compose", ["--parts", "routing"])] if routers else [])
        runs = [(folder, extra) for folder, extra in runs if not (folder / "results.json").is_file()]
    for folder, extra in runs:
        sub = command if command == "vision" else "compose" if folder.name == "compose" else "merge"
        size = ["--quick"] if args.quick else []
        line = [str(Path(sys.executable).parent / "eigenmix"), "bench", sub, *size, "--tasks", ",".join(tasks), "--kind", kind,
                *extra, "--cache-dir", str(args.cache_dir), "--out", str(folder)]  # fmt: skip
        print(" ".join(line[1:]), flush=True)
        subprocess.run(line, check=True, env=os.environ | {"OMP_NUM_THREADS": str(args.threads)})


def _mean(per_task: dict[str, float]) -> float:
    return sum(per_task.values()) / len(per_task)


def summary(merge: dict, compose: dict | None) -> dict:
    """The table's numbers of one kind and order (routers: those of its compose run, if any)."""
    chosen = METHODS.split(",")
    methods = {n: r for n, r in merge["methods"].items() if n in chosen or n in [f"{m}(n={CALIBRATION_ROWS})" for m in chosen]}
    calibrated = {n: r for n, r in methods.items() if n.split("(")[0] in CALIBRATED}
    data_free = {n: r for n, r in methods.items() if n not in calibrated}
    best = max(data_free, key=lambda n: data_free[n]["avg_normalized_acc"])
    best_calibrated = max(calibrated, key=lambda n: calibrated[n]["avg_normalized_acc"]) if calibrated else None
    routed = {n: r for n, r in compose["routers"].items() if "routing_acc" in r} if compose else {}
    params = merge["trained_parameters"]
    return {
        "tasks": merge["tasks"],
        "trained_parameters": sum(params.values()) // len(params),
        "individual": sum(merge["individual"].values()) / len(merge["individual"]),
        "task_arithmetic": methods["task_arithmetic"]["avg_normalized_acc"],
        "best_merge": [best, data_free[best]["avg_normalized_acc"]],
        "best_calibrated": [best_calibrated, calibrated[best_calibrated]["avg_normalized_acc"]] if best_calibrated else None,
        "routers": {n: {"normalized": r["avg_normalized_acc"], "routing_acc": _mean(r["routing_acc"])} for n, r in routed.items()},
        "overlap": merge["overlap"],
    }


def markdown(result: dict) -> str:
    header = ("| kind | order | params / module | individual | task_arithmetic | best data-free merge | best calibrated | "
              "spectral routing (acc, norm.) | learned router (norm.) | row overlap | column overlap |")  # fmt: skip
    lines = [header, "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for kind, runs in result["kinds"].items():
        for order, s in enumerate(runs):
            spectral, learned = s["routers"].get("spectral"), s["routers"].get("learned(n=64)")
            calibrated = f"{s['best_calibrated'][0]} {100 * s['best_calibrated'][1]:.1f}" if s["best_calibrated"] else ""
            cells = [kind, str(order), f"{s['trained_parameters']:,}", f"{100 * s['individual']:.1f}", f"{100 * s['task_arithmetic']:.1f}",
                     f"{s['best_merge'][0]} {100 * s['best_merge'][1]:.1f}", calibrated,
                     f"{100 * spectral['routing_acc']:.1f}, {100 * spectral['normalized']:.1f}" if spectral else "",
                     f"{100 * learned['normalized']:.1f}" if learned else "",
                     f"{s['overlap']['row_overlap']:.3f}", f"{s['overlap']['column_overlap']:.3f}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def every_method(out: Path) -> str:
    """Normalized accuracy of every merge method (rows, best first on ``lora``) on each kind's
    modules (columns), from the runs under ``out/all_methods``."""
    runs = {k: json.loads((out / "all_methods" / k / "merge" / "results.json").read_text())["methods"]
            for k in KINDS.split(",") if (out / "all_methods" / k / "merge" / "results.json").is_file()}  # fmt: skip
    first = next(iter(runs.values()))
    names = sorted(first, key=lambda n: -first[n]["avg_normalized_acc"])
    lines = ["| method | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{100 * r[n]['avg_normalized_acc']:.1f}" if n in r else "" for r in runs.values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("text", "vision"), default="text")
    parser.add_argument("--tasks", default=None, help="comma-separated (default: every task of the suite)")
    parser.add_argument("--kinds", default=KINDS)
    parser.add_argument("--orders", type=int, default=3, help="arrival orders of the orthogonal kind")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "eigenmix")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/train_kinds[_vision]")
    parser.add_argument("--table", action="store_true", help="only gather the table from the runs under --out")
    parser.add_argument("--all-methods", action="store_true", help="also every merge method on each kind's first order (all_methods.md)")
    args = parser.parse_args()
    args.out = args.out or Path("benchmarks/results/train_kinds" + ("_vision" if args.suite == "vision" else ""))
    tasks = (args.tasks or TASKS[args.suite]).split(",")
    command = "vision" if args.suite == "vision" else "merge"
    for kind in [] if args.table else args.kinds.split(","):
        for number, order in enumerate(orders(tasks, args.orders if kind == "orthogonal" else 1)):
            bench(command, kind, order, args.out / f"{kind}-{number}", args, routers=number == 0)  # the routers once per kind
        if args.all_methods:
            bench(command, kind, tasks, args.out / "all_methods" / kind, args, routers=False, every=True)
    # the table: every run under --out (earlier calls' too), kinds in KINDS' order, then orders
    done = sorted((f for f in args.out.glob("*-*") if (f / "merge" / "results.json").is_file()),
                  key=lambda f: (KINDS.split(",").index(f.name.rsplit("-", 1)[0]), int(f.name.rsplit("-", 1)[1])))  # fmt: skip
    result: dict = {"benchmark": "train_kinds", "suite": args.suite, "tasks": tasks, "quick": args.quick, "kinds": {}}
    for folder in done:
        merge = json.loads((folder / "merge" / "results.json").read_text())
        compose = json.loads((folder / "compose" / "results.json").read_text()) if (folder / "compose").is_dir() else None
        result["kinds"].setdefault(folder.name.rsplit("-", 1)[0], []).append(summary(merge, compose))
    write_result(args.out / "train_kinds.json", result)
    (args.out / "train_kinds.md").write_text(markdown(result))
    if (args.out / "all_methods").is_dir():
        (args.out / "all_methods.md").write_text(every_method(args.out))


if __name__ == "__main__":
    main()
