"""Modules of every training kind on the same text tasks (issue 26, a pilot at the quick size).

For each kind, one module per task is trained by ``eigenmix.train.train_module`` with one
recipe (``orthogonal``: each task's module orthogonal to the modules of the tasks before it,
in the listed order); then per kind: each module's own test accuracy, the ``task_arithmetic``
merge (scale 1, no search) evaluated with each task's head, normalised by the module's own
accuracy, the trained parameters, and the overlap of the modules' row spaces (the mean squared
cosine of the principal angles between two modules' row spaces, averaged over layers and
pairs: 0 is orthogonal).

    .venv/bin/python benchmarks/train_kinds.py --tasks sst2,ag_news,trec --steps 50 \
        --out benchmarks/results/train_kinds_quick.json
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench_common import write_result
from eigenmix import merge
from eigenmix.data import load_tasks
from eigenmix.io import read_lora_adapter, write_lora_adapter
from eigenmix.kinds import all_kinds
from eigenmix.modules import Module
from eigenmix.train import ModuleRecipe, evaluate_adapter, quiet_transformers, train_module


def row_overlap(a: Module, b: Module) -> float:
    """Mean over shared layers of ‖Q_aᵀ Q_b‖²_F / min(rank): the row spaces' mean squared cosine."""
    def rows(m: Module, name: str) -> torch.Tensor:
        f = m.layers[name].svd64()
        return f.V[:, : max(1, int((f.S > 1e-8 * f.S[0]).sum()))]

    values = []
    for name in set(a.layers) & set(b.layers):
        qa, qb = rows(a, name), rows(b, name)
        values.append(float((qa.T @ qb).pow(2).sum()) / min(qa.shape[1], qb.shape[1]))
    return sum(values) / len(values)


def with_head(adapter: Path, head_of: Path, folder: Path) -> Path:
    shutil.copytree(adapter, folder)
    for name in ("head.safetensors", "head.json"):
        shutil.copy(head_of / name, folder / name)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,ag_news,trec")
    parser.add_argument("--kinds", default=",".join(k.name for k in all_kinds()))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_kinds_quick.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    tasks = load_tasks(names=args.tasks.split(","))
    base = {"steps": args.steps, "batch_size": 16, "max_length": 64, "lr": 2e-3, "head_lr": 5e-3, "warmup": 0.1}
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for kind in args.kinds.split(","):
            entry: dict = {"individual": {}, "trained_parameters": {}, "train_seconds": {}}
            modules: list[Module] = []
            for task in tasks:
                folder = root / kind / task.name
                done = train_module(task, ModuleRecipe(**base, kind=kind), folder, library=list(modules))
                modules.append(read_lora_adapter(folder))
                entry["individual"][task.name] = evaluate_adapter(folder, task, limit=args.test_rows)
                entry["trained_parameters"][task.name] = int(done["trained_parameters"])
                entry["train_seconds"][task.name] = round(done["train_seconds"], 1)
                print(kind, task.name, entry["individual"][task.name], flush=True)
            start = time.perf_counter()
            merged = merge(modules, "task_arithmetic")
            entry["merge_seconds"] = round(time.perf_counter() - start, 2)
            write_lora_adapter(merged, root / kind / "merged")
            entry["merged"] = {
                t.name: evaluate_adapter(with_head(root / kind / "merged", root / kind / t.name, root / kind / f"merged-{t.name}"), t,
                                         limit=args.test_rows)
                for t in tasks
            }  # fmt: skip
            entry["avg_individual"] = sum(entry["individual"].values()) / len(tasks)
            entry["avg_normalized_merged"] = sum(entry["merged"][t.name] / entry["individual"][t.name] for t in tasks) / len(tasks)
            pairs = list(itertools.combinations(modules, 2))
            entry["row_overlap"] = sum(row_overlap(a, b) for a, b in pairs) / max(1, len(pairs))
            results[kind] = entry
    write_result(args.out, {"benchmark": "train_kinds", "tasks": [t.name for t in tasks], "recipe": base, "test_rows": args.test_rows,
                            "merge": "task_arithmetic, scale 1 (no search)", "kinds": results})  # fmt: skip


if __name__ == "__main__":
    main()
