"""A cost model for a layer-parallel merge on N Ray nodes, from what merge_scale.py measured here.

    .venv/bin/python benchmarks/ray_cost_model.py --from benchmarks/results/merge_scale.json \
        --json benchmarks/results/ray_cost_model.json

The Ray runs of ``merge_scale.py`` (``ties`` on the ~1B set, one thread per layer) give two
wall times: ``t1`` with one worker, ``t2`` with two. With ``t = f + C / N`` (``f``: what does
not split over workers — Ray's start, the driver writing the output; ``C``: the layer work),
``C = 2 (t1 − t2)`` and ``f = 2 t2 − t1``. ``C`` per parameter, times the parameters of a 70B
model (Llama-2-70B: 69.0 B), is the layer work of a 70B merge of the same K = 3 bf16
fine-tunes. The workers read ``(K + 1) × 2`` bytes per parameter from shared storage and the
driver writes 2 bytes per parameter, so

    T(N) = max(C₇₀ / N, read_bytes / S_read, write_bytes / S_write)

and adding nodes stops paying at ``N* = C₇₀ / max(read_bytes / S_read, write_bytes / S_write)``.
The storage speeds are this machine's measured disk read (``disk_read_mb_per_s``, also taken
as the driver's write speed) and two shared-storage speeds a cluster might have (1 and 10 GB/s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_common import write_result

PARAMETERS_70B = 68_976_648_192  # Llama-2-70B
K = 3
BYTES = 2  # bf16


def model(measured: dict) -> dict:
    ray, params = measured["ray"], measured["parameters"]
    t1, t2 = ray["1"]["seconds"], ray["2"]["seconds"]
    work, fixed = 2 * (t1 - t2), 2 * t2 - t1
    if work <= 0:
        raise SystemExit(f"two workers were no faster than one ({t2} s against {t1} s): no layer work to scale")
    per_parameter = work / params
    work_70b = per_parameter * PARAMETERS_70B
    read_gb, write_gb = (K + 1) * BYTES * PARAMETERS_70B / 1e9, BYTES * PARAMETERS_70B / 1e9
    here = measured["disk_read_mb_per_s"] / 1000
    storages = {"this machine's disk": here, "shared storage at 1 GB/s": 1.0, "shared storage at 10 GB/s": 10.0}
    rows = {}
    for name, speed in storages.items():
        floor = max(read_gb / speed, write_gb / min(speed, here))  # the driver writes at most at this disk's speed
        rows[name] = {
            "storage_gb_per_s": round(speed, 3),
            "io_floor_seconds": round(floor, 1),
            "nodes_until_io_bound": round(work_70b / floor, 1),
            "hours_at_nodes": {n: round(max(work_70b / n, floor) / 3600, 2) for n in (1, 2, 4, 8, 16, 32, 64)},
        }
    return {
        "measured": {"parameters": params, "t1_seconds": t1, "t2_seconds": t2, "speed_up_2_over_1": round(t1 / t2, 2),
                     "layer_work_seconds": round(work, 1), "fixed_seconds": round(fixed, 1),
                     "layer_work_seconds_per_billion_parameters": round(per_parameter * 1e9, 1)},
        "merge_70b": {"parameters": PARAMETERS_70B, "fine_tunes": K, "read_gb": round(read_gb, 1), "write_gb": round(write_gb, 1),
                      "layer_work_hours_one_worker": round(work_70b / 3600, 2)},
        "by_storage": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, required=True, help="merge_scale.py's JSON (with its Ray runs)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    measured = json.loads(args.source.read_text())
    write_result(args.json, {**model(measured), "command": f"python benchmarks/ray_cost_model.py --from {args.source} --json {args.json}"})


if __name__ == "__main__":
    main()
