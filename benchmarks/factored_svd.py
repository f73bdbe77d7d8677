"""Factored SVD of ``B @ A`` against ``torch.linalg.svd`` of the formed product, one run.

    python benchmarks/factored_svd.py --json benchmarks/results/factored_svd.json

B is 4096×16 and A 16×4096 (float32, seeded). The dense side forms ``B @ A`` and runs
``torch.linalg.svd(..., full_matrices=False)`` (the thin SVD, the cheaper of the two
torch offers); the factored side is :func:`eigenmix.spectral.factored_svd`. Each is timed
as the median of ``--repeats`` runs, in one process, side by side. Singular values are
compared over the top r = 16 (the rest of the dense spectrum is roundoff).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench_common import write_result
from eigenmix.spectral import factored_svd


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the result")
    parser.add_argument("--m", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the dense SVD (factored: 10x as many)")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    B = torch.randn(args.m, args.r, generator=g)
    A = torch.randn(args.r, args.n, generator=g)

    dense_s, dense = timed(lambda: torch.linalg.svd(B @ A, full_matrices=False), args.repeats)
    fact_s, fact = timed(lambda: factored_svd(B, A), 10 * args.repeats)
    S_dense = dense.S[: args.r].double()
    rel = float(((fact.S.double() - S_dense).abs() / S_dense).max())
    write_result(
        args.json,
        {
            "m": args.m,
            "n": args.n,
            "r": args.r,
            "dense_seconds": dense_s,
            "factored_seconds": fact_s,
            "speedup": dense_s / fact_s,
            "max_rel_err_singular_values": rel,
        },
    )


if __name__ == "__main__":
    main()
