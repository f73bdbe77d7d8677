"""Spectral MoE speed: nn.Linear, the fast path and the literal per-expert path, one run.

    python benchmarks/moe_speed.py --json benchmarks/results/moe_speed.json

CPU, float32, ``--tokens`` (2048) tokens through a ``--size`` × ``--size`` (4096) layer
with a bias, forward only (``torch.inference_mode``), the per-token router, spectral
mode. The fast path runs for every E in ``--experts`` (4, 8, 16, 64) and k in ``--ranks``
(64, 4096); the naive path for E in ``--naive-experts`` (4, 8, 16). The layer's SVD is
computed once per k (float64) and every configuration runs the same pure functions as
``SpectralMoELinear.forward`` / ``.naive`` (:mod:`eigenmix.moe.functional`), with random
scales, gates and routers. Each timing is the median of ``--repeats`` runs after one
warm-up; configurations are interleaved with ``nn.Linear`` re-timings so that ratios
compare runs taken moments apart.

Keys per (E, k): ``fast_over_linear`` (fast seconds / nn.Linear seconds) and, where the
naive path ran, ``naive_over_fast``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench_common import write_result
from eigenmix.moe import MoEParams, fast_forward, naive_forward


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def params(weight: torch.Tensor, bias: torch.Tensor, svd: tuple, k: int, n_experts: int, seed: int) -> MoEParams:
    U, S, Vh = svd
    g = torch.Generator().manual_seed(seed)
    m, n = weight.shape
    return MoEParams(
        weight, bias, U[:, :k].float().contiguous(), S[:k].float(), Vh[:k].T.float().contiguous(),
        1 + 0.1 * torch.randn(n_experts, k, generator=g), 0.01 * torch.randn(m, n_experts, generator=g),
        torch.full((n_experts,), 7.0), 0.01 * torch.randn(n, 1, generator=g), torch.zeros(1),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the result")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--experts", type=int, nargs="+", default=[4, 8, 16, 64])
    parser.add_argument("--naive-experts", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--ranks", type=int, nargs="+", default=[64, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-repeats", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    linear = torch.nn.Linear(args.size, args.size)
    weight, bias = linear.weight.detach(), linear.bias.detach()
    x = torch.randn(args.tokens, args.size)
    start = time.perf_counter()
    svd = torch.linalg.svd(weight.double(), full_matrices=False)
    svd_seconds = time.perf_counter() - start

    results, linear_times = {}, []
    with torch.inference_mode():
        for k in args.ranks:
            for E in sorted(set(args.experts) | set(args.naive_experts)):
                p = params(weight, bias, svd, k, E, seed=E)
                linear_s = timed(lambda: linear(x), args.repeats)
                linear_times.append(linear_s)
                entry = {"E": E, "k": k, "linear_seconds": linear_s}
                if E in args.experts:
                    entry["fast_seconds"] = timed(lambda p=p: fast_forward(x, p, "spectral"), args.repeats)
                    entry["fast_over_linear"] = entry["fast_seconds"] / linear_s
                if E in args.naive_experts:
                    entry["naive_seconds"] = timed(lambda p=p: naive_forward(x, p, "spectral"), args.naive_repeats)
                    fast_s = entry.get("fast_seconds") or timed(lambda p=p: fast_forward(x, p, "spectral"), args.repeats)
                    entry["naive_over_fast"] = entry["naive_seconds"] / fast_s
                results[f"E={E},k={k}"] = entry
                print(entry, flush=True)

    fast = {key: r for key, r in results.items() if "fast_over_linear" in r}
    targets = {}
    for k in args.ranks:
        if k <= 64:
            targets[f"k={k}: fast <= 1.15x nn.Linear (all E)"] = all(r["fast_over_linear"] <= 1.15 for r in fast.values() if r["k"] == k)
        if 4 in args.experts and 64 in args.experts:
            e4, e64 = results[f"E=4,k={k}"]["fast_seconds"], results[f"E=64,k={k}"]["fast_seconds"]
            targets[f"k={k}: E=64 within 1.1x of E=4"] = e64 / e4 <= 1.1
        if k == args.size:
            for E in (8, 16):
                if f"E={E},k={k}" in results and "naive_over_fast" in results[f"E={E},k={k}"]:
                    targets[f"k={k}, E={E}: naive >= E/2 x fast"] = results[f"E={E},k={k}"]["naive_over_fast"] >= E / 2
    write_result(
        args.json,
        {
            "tokens": args.tokens,
            "in_features": args.size,
            "out_features": args.size,
            "dtype": "float32",
            "router": "token",
            "mode": "spectral",
            "svd_float64_seconds": svd_seconds,
            "linear_seconds_median": statistics.median(linear_times),
            "configs": results,
            "targets_met": targets,
        },
    )


if __name__ == "__main__":
    main()
