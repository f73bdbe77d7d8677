"""Threads on a quiet and on a busy machine: torch's default (every core) against eigenmix's.

    .venv/bin/python benchmarks/merge_threads.py --json benchmarks/results/merge_threads.json

Two merges through the installed ``eigenmix merge``, each in a fresh process, on one
decoder block (7 layers) of a quarter of Llama-7B's widths (1024 and 2752): ``ties`` over 8
LoRA adapters of rank 16 (dense element-wise work, and the exact SVD that writes each
merged layer as an adapter) and ``linear`` over 30 adapters of rank 8 (the factored path:
QR of m × 240 stacks and 240 × 240 cores). Each runs with ``--threads <all cores>`` (what torch
does by default) and with eigenmix's default (no flag: the cores not already busy by the
1-minute load average; small dense algebra on one thread whatever the setting). Then one
120 × 120 ``eigh`` (median of 20) with all cores against one thread. Every measurement is
taken on a quiet machine and again beside a busy one: a second process running float32
matrix products on every core (another job, as a benchmark beside a merge), started before
the runs and left until the load average shows it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

import merge_speed
from bench_common import write_result
from merge_speed import write_adapters

merge_speed.SHAPES = {name: (m // 4, n // 4) for name, (m, n) in merge_speed.SHAPES.items()}  # a quarter of 7B's widths

BIN = Path(sys.executable).parent
BUSY = "import torch\nx = torch.randn(1500, 1500)\nwhile True:\n    x = (x @ x).tanh_()\n"


def merge_seconds(cfg: Path, out: Path, threads: int | None, limit: float = 300) -> float | str:
    flag = [] if threads is None else ["--threads", str(threads)]
    start = time.perf_counter()
    try:
        subprocess.run([str(BIN / "eigenmix"), "merge", str(cfg), "--out", str(out), *flag], check=True, capture_output=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return f"over {limit:g} s (stopped)"
    finally:
        subprocess.run(["rm", "-rf", str(out)], check=True)
    return round(time.perf_counter() - start, 2)


def eigh_ms(threads: int) -> float:
    torch.set_num_threads(threads)
    a = torch.randn(120, 120, dtype=torch.float64)
    a = a @ a.T
    times = []
    for _ in range(20):
        start = time.perf_counter()
        torch.linalg.eigh(a)
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 3)


def measure(configs: dict[str, Path], root: Path, cores: int) -> dict:
    row: dict = {}
    for name, cfg in configs.items():
        row[name] = {"all_cores": merge_seconds(cfg, root / "out", cores), "eigenmix_default": merge_seconds(cfg, root / "out", None)}
        a, b = row[name]["all_cores"], row[name]["eigenmix_default"]
        row[name]["ratio_all_cores_over_default"] = round(a / b, 2) if isinstance(a, float) and isinstance(b, float) else None
    row["eigh_120_ms"] = {"all_cores": eigh_ms(cores), "one_thread": eigh_ms(1)}
    row["load_average"] = round(os.getloadavg()[0], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        configs = {}
        for method, k, r in (("ties", 8, 16), ("linear", 30, 8)):
            (root / method).mkdir()
            folders = write_adapters(root / method, 1, k, r, 2.0 * r, seed=k)
            body = {"method": method, "modules": [{"path": str(f)} for f in folders], "output": {"rank": 64}}
            body |= {"parameters": {"density": 0.2}} if method == "ties" else {}
            configs[f"{method}_{k}_adapters"] = root / f"{method}.yaml"
            configs[f"{method}_{k}_adapters"].write_text(yaml.safe_dump(body))
        results: dict = {"cores": cores, "quiet": measure(configs, root, cores)}
        busy = subprocess.Popen([sys.executable, "-c", BUSY], env={**os.environ, "OMP_NUM_THREADS": str(cores)})
        try:
            deadline = time.monotonic() + 120
            while os.getloadavg()[0] < cores - 0.5 and time.monotonic() < deadline:  # until the load average shows the job
                time.sleep(2)
            results["busy"] = measure(configs, root, cores)
        finally:
            busy.kill()
            busy.wait()
    results["command"] = "python benchmarks/merge_threads.py " + " ".join(sys.argv[1:])
    write_result(args.json, results)


if __name__ == "__main__":
    main()
