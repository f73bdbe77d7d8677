"""RegMean's solve on Llama-7B layer shapes: eigenmix's factored solve against the dense formula.

    python benchmarks/regmean_solve.py --json benchmarks/results/regmean_solve.json

K = 8 random LoRA adapters (rank 16, seeded) on three Llama-7B shapes — q (4096 × 4096),
gate (11008 × 4096) and down (4096 × 11008) — with synthetic Grams ``XᵀX`` of 512 rows per
task (float64, n × n, as a calibration pass gives them). Each solve runs in a fresh
process (``--one``): the factored one through ``eigenmix.merge(…, "regmean")`` (rank ≤ Σ r_k,
no m × n product), the dense one as ``(Σ_k ΔW_k G̃_k)(Σ_k G̃_k)⁻¹`` on full ΔW_k (what an
implementation on merged weights does). Recorded: seconds of the solve alone, the peak
resident memory of the process (VmHWM) and the part above the inputs' own (the Grams and
factors, measured before the solve), and the largest relative difference of the results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench_common import write_result

SHAPES = {"q_proj": (4096, 4096), "gate_proj": (11008, 4096), "down_proj": (4096, 11008)}
K, R, ROWS = 8, 16, 512


def vm(key: str) -> float:
    """A memory figure of this process from /proc/self/status, in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def inputs(m: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    factors = [(torch.randn(m, R, generator=g) / R**0.5, torch.randn(R, n, generator=g) / n**0.5) for _ in range(K)]
    grams = []
    for _ in range(K):
        X = torch.randn(ROWS, n, generator=g, dtype=torch.float64) * (1 + torch.rand(n, generator=g, dtype=torch.float64))
        grams.append(X.T @ X)
    return factors, grams


def one(kind: str, shape: str, alpha: float, out: Path) -> None:
    """One solve in this process; its result (and figures) to ``out``."""
    from eigenmix import merge
    from eigenmix.merging.statistics import Grams
    from eigenmix.modules import LowRankDelta, Module

    torch.set_num_threads(2)
    m, n = SHAPES[shape]
    factors, grams = inputs(m, n)
    base = vm("VmRSS")
    start = time.perf_counter()
    if kind == "factored":
        modules = [Module(f"m{k}", {shape: LowRankDelta(B, A)}) for k, (B, A) in enumerate(factors)]
        merged = merge(modules, "regmean", alpha=alpha, calibration=Grams([{shape: G} for G in grams], [{shape: ROWS}] * K))
        d = merged.layers[shape]
        probe = (d.U.double() * d.S.double()) @ d.V[:64].double().T  # (m, 64): the first 64 input columns
        rank = d.rank
    else:
        S = torch.zeros(n, n, dtype=torch.float64)
        for G in grams:  # shrunk in place: G̃ = (α G + (1 − α) diag G) / rows
            diagonal = G.diagonal().clone()
            G.mul_(alpha / ROWS)
            G.diagonal().copy_(diagonal / ROWS)
            S += G
        num = torch.zeros(m, n, dtype=torch.float64)
        for (B, A), G in zip(factors, grams, strict=True):
            num += (B.double() @ A.double()) @ G  # the dense ΔW_k G̃_k
        W = torch.linalg.solve(S, num.T).T  # (Σ ΔW_k G̃_k) S⁻¹, S symmetric
        probe, rank = W[:, :64], -1
    seconds = time.perf_counter() - start
    save_file({"probe": probe.double().contiguous()}, str(out.with_suffix(".safetensors")))  # this run's scratch file
    out.write_text(json.dumps({"seconds": seconds, "peak_gb": vm("VmHWM"), "inputs_gb": base, "rank": rank}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--one", nargs=3, metavar=("KIND", "SHAPE", "OUT"))
    args = parser.parse_args()
    if args.one:
        one(args.one[0], args.one[1], args.alpha, Path(args.one[2]))
        return
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for shape in SHAPES:
            row = {}
            for kind in ("factored", "dense"):
                out = Path(scratch) / f"{kind}-{shape}.json"
                subprocess.run([sys.executable, __file__, "--alpha", str(args.alpha), "--one", kind, shape, str(out)], check=True)
                row[kind] = json.loads(out.read_text())
                row[kind]["working_gb"] = round(row[kind]["peak_gb"] - row[kind]["inputs_gb"], 2)
            a = load_file(str(Path(scratch) / f"factored-{shape}.safetensors"))["probe"]
            b = load_file(str(Path(scratch) / f"dense-{shape}.safetensors"))["probe"]
            row["max_rel_diff"] = float((a - b).abs().max() / b.abs().max())
            row["speedup"] = round(row["dense"]["seconds"] / row["factored"]["seconds"], 1)
            results[shape] = row
            print(shape, json.dumps(row))
    write_result(args.json, {"shapes": SHAPES, "K": K, "rank": R, "rows": ROWS, "alpha": args.alpha, "results": results,
                             "command": "python benchmarks/regmean_solve.py --json " + str(args.json)})  # fmt: skip


if __name__ == "__main__":
    main()
