"""What the vision benchmark's 64 px costs in accuracy against 224 px, on a sample.

    .venv/bin/python benchmarks/vision_resolution_accuracy.py --json benchmarks/results/vision_resolution_accuracy.json

For each task of ``eigenmix bench vision`` (the four 5-way Fashion-MNIST / MNIST tasks,
the suite's own rows), the frozen ImageNet EfficientNet-Lite0 at each of ``--sizes``
(224, 64) px: a linear probe (``eigenmix.bench.probe.fit_probe``, the benchmark's floor) on
the pooled features of the first ``--train`` (500) training images, scored on the first
``--test`` (300) test images. The frozen backbone's probe is the one entry that can be run at
224 px here: a conv LoRA step at 224 px costs about 43× one at 64 px (the forward times of
``vision_resolution.json``), so the LoRA entries are not repeated at 224 px. Also the
seconds of each size's feature pass. ``--threads`` (2) torch threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench_common import write_result
from eigenmix.bench.probe import fit_probe
from eigenmix.bench.suites import VISION_TASKS, VisionSuite
from eigenmix.harness.backbones import load_backbone
from eigenmix.harness.evaluator import Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/vision_resolution_accuracy.json"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = VisionSuite().tasks(VISION_TASKS, None, 0)
    out: dict[str, dict] = {}
    for size in args.sizes:
        ev = Evaluator(backbone=load_backbone("efficientnet-lite0", image_size=size))
        start = time.perf_counter()
        acc = {}
        for task in tasks:
            train, test = task.train[: args.train], task.test[: args.test]
            head = fit_probe(ev.features(ev.split({task.name: train}, 64)), torch.tensor([r.label for r in train]), task.num_labels)
            acc[task.name] = ev.accuracies(ev.split({task.name: test}, 64), {task.name: head})[task.name]
        seconds = time.perf_counter() - start
        out[str(size)] = {"probe_acc": acc, "avg": sum(acc.values()) / len(acc), "seconds": round(seconds, 1)}
        print(f"{size:>4} px: probe avg {100 * out[str(size)]['avg']:.1f}% {acc} ({seconds:.0f} s)", flush=True)
    low, high = str(min(args.sizes)), str(max(args.sizes))
    cost = {"points": round(100 * (out[high]["avg"] - out[low]["avg"]), 2), "speedup": round(out[high]["seconds"] / out[low]["seconds"], 1)}
    write_result(args.json, {"train": args.train, "test": args.test, "threads": args.threads, "sizes": out, f"{low}_vs_{high}": cost})


if __name__ == "__main__":
    main()
