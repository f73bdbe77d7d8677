"""Spectral MoE on nn.Conv2d: the conv, the fast path and the literal path, one run.

    python benchmarks/moe_conv_speed.py --json benchmarks/results/moe_conv_speed.json

CPU, float32, forward only (``torch.inference_mode``), the per-position router, spectral
mode, 2 threads. For each conv shape (``SHAPES``: a 1×1 conv of the size the linear
benchmark uses, a 3×3 conv of a ResNet stage, EfficientNet-Lite0's 1×1 head conv at 64 px)
the fast path runs for every E in ``--experts`` at k = 64 and at full rank; the naive
path (unfolded patches, one full ``y_e`` per expert) for E = 4. Each timing is the median
of ``--repeats`` runs after one warm-up; the two sides of each ratio run alternately (ABAB…).

Keys per (shape, E, k): ``fast_over_conv`` and, where the naive path ran, ``naive_over_fast``;
``targets_met``: fast ≤ 1.15× the conv at k = 64 for every E, and E = 64 within 1.1× of E = 4.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from bench_common import paired, write_result
from eigenmix.moe import SpectralMoEConv2d

# name: (in, out, kernel, stride, padding, batch, side)
SHAPES = {
    "1x1 1024->1024, 8x16x16": (1024, 1024, 1, 1, 0, 8, 16),
    "3x3 256->256, 8x32x32": (256, 256, 3, 1, 1, 8, 32),
    "lite0 head 1x1 320->1280, 64x2x2": (320, 1280, 1, 1, 0, 64, 2),
}


def layer_for(conv: nn.Conv2d, experts: int, rank: int | None, seed: int) -> SpectralMoEConv2d:
    layer = SpectralMoEConv2d.from_conv(conv, experts, rank)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.scales.copy_(1 + 0.1 * torch.randn(layer.scales.shape, generator=g))
        layer.router.copy_(0.01 * torch.randn(layer.router.shape, generator=g))  # type: ignore[union-attr]
    return layer


def measure(name: str, shape: tuple[int, ...], experts: list[int], repeats: int) -> tuple[dict, dict]:
    """One conv shape: every (E, k) against the conv, the naive path at E = 4, E = 64 against E = 4."""
    c_in, c_out, kernel, stride, padding, batch, side = shape
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
    x = torch.randn(batch, c_in, side, side)
    results, targets = {}, {}
    for k in (64, min(c_out, c_in * kernel * kernel)):
        for E in experts:
            layer = layer_for(conv, E, k, seed=E)
            conv_s, fast_s = paired(lambda: conv(x), lambda layer=layer: layer(x), repeats)
            entry = {"shape": name, "E": E, "k": k, "conv_seconds": conv_s, "fast_seconds": fast_s, "fast_over_conv": fast_s / conv_s}
            if E == 4:
                fast_n, naive_s = paired(lambda layer=layer: layer(x), lambda layer=layer: layer.naive(x), 3)
                entry |= {"naive_seconds": naive_s, "naive_over_fast": naive_s / fast_n}
            results[f"{name}: E={E}, k={k}"] = entry
            print(entry, flush=True)
    at64 = [r for r in results.values() if r["k"] == 64]
    targets[f"{name}: fast <= 1.15x conv at k=64 (all E)"] = all(r["fast_over_conv"] <= 1.15 for r in at64)
    if 4 in experts and 64 in experts:
        a, b = layer_for(conv, 4, 64, 4), layer_for(conv, 64, 64, 64)
        e4, e64 = paired(lambda: a(x), lambda: b(x), repeats)
        targets[f"{name}: E=64 within 1.1x of E=4 (k=64)"] = e64 / e4 <= 1.1
        results[f"{name}: E64_over_E4"] = {"shape": name, "E=4_seconds": e4, "E=64_seconds": e64, "E64_over_E4": e64 / e4}
    return results, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--experts", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results, targets = {}, {}
    with torch.inference_mode():
        for name, shape in SHAPES.items():
            r, t = measure(name, shape, args.experts, args.repeats)
            results |= r
            targets |= t
    write_result(args.json, {"dtype": "float32", "router": "token", "mode": "spectral", "threads": args.threads,
                             "configs": results, "targets_met": targets})  # fmt: skip


if __name__ == "__main__":
    main()
