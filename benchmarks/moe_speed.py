"""Spectral MoE speed: nn.Linear, the fast path and the literal per-expert path, one run.

    python benchmarks/moe_speed.py --json benchmarks/results/moe_speed.json

CPU, float32, ``--tokens`` (2048) tokens through a ``--size`` × ``--size`` (4096) layer
with a bias, forward only (``torch.inference_mode``), the per-token router, spectral
mode. The fast path runs for every E in ``--experts`` (4, 8, 16, 64) and k in ``--ranks``
(64, 4096); the naive path for E in ``--naive-experts`` (4, 8, 16). The layer's SVD is
computed once per k (float64) and every configuration runs the same pure functions as
``SpectralMoELinear.forward`` / ``.naive`` (:mod:`eigenmix.moe.functional`), with random
scales, gates and routers. Each timing is the median of ``--repeats`` runs after one
warm-up, the two sides of each ratio run alternately (ABAB…) so that both see the same
machine load.

Keys per (E, k): ``fast_over_linear`` (fast seconds / nn.Linear seconds) and, where the
naive path ran, ``naive_over_fast``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench_common import paired, write_result
from eigenmix.moe import MoEParams, fast_forward, naive_forward


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
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--naive-repeats", type=int, default=3)
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
                fast = lambda p=p: fast_forward(x, p, "spectral")  # noqa: E731
                linear_s, fast_s = paired(lambda: linear(x), fast, args.repeats)
                linear_times.append(linear_s)
                entry = {"E": E, "k": k, "linear_seconds": linear_s, "fast_seconds": fast_s, "fast_over_linear": fast_s / linear_s}
                if E in args.naive_experts:
                    fast_s, naive_s = paired(fast, lambda p=p: naive_forward(x, p, "spectral"), args.naive_repeats)
                    entry |= {"fast_seconds_beside_naive": fast_s, "naive_seconds": naive_s, "naive_over_fast": naive_s / fast_s}
                results[f"E={E},k={k}"] = entry
                print(entry, flush=True)

    fast = {key: r for key, r in results.items() if r["E"] in args.experts}
    targets, scaling = {}, {}
    for k in args.ranks:
        if k <= 64:
            targets[f"k={k}: fast <= 1.15x nn.Linear (all E)"] = all(r["fast_over_linear"] <= 1.15 for r in fast.values() if r["k"] == k)
        if 4 in args.experts and 64 in args.experts:
            with torch.inference_mode():  # the two measured side by side
                p4, p64 = params(weight, bias, svd, k, 4, seed=4), params(weight, bias, svd, k, 64, seed=64)
                run4, run64 = (lambda p=p4: fast_forward(x, p, "spectral")), (lambda p=p64: fast_forward(x, p, "spectral"))
                e4, e64 = paired(run4, run64, args.repeats)
            scaling[f"k={k}"] = {"E=4_seconds": e4, "E=64_seconds": e64, "E64_over_E4": e64 / e4}
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
            "fast_E64_vs_E4": scaling,
            "targets_met": targets,
        },
    )


if __name__ == "__main__":
    main()
