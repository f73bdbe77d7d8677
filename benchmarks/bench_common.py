"""What every benchmark script shares: the machine description and the JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine() -> dict:
    """Cores, torch threads, processor and torch version, recorded with every result."""
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.machine(), "torch": torch.__version__}


def write_result(path: Path, result: dict) -> None:
    """Write ``result`` (plus the machine) as JSON, atomically, and print it."""
    result = {**result, "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(json.dumps(result, indent=2))


def once(fn: Callable[[], object]) -> float:
    """Seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, run alternately (ABAB…) after one warm-up each,
    so that both see the same machine load."""
    a(), b()
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(once(a))
        times_b.append(once(b))
    return statistics.median(times_a), statistics.median(times_b)
