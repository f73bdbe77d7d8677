"""Merge speed: PEFT ``add_weighted_adapter(combination_type="svd")`` against eigenmix,
producing the same merged delta, in one run; and eigenmix end to end on a 32-layer set.

    python benchmarks/merge_speed.py --json benchmarks/results/merge_speed.json

Timings: PEFT once (minutes); eigenmix the median of 3 in-process runs; end to end the
median of 3 fresh-process runs (minimum and all runs also recorded).

K = 8 random LoRA adapters (rank 16, seeded) on Llama-7B layer shapes (hidden 4096,
intermediate 11008; q/k/v/o/gate/up/down) for ``--decoder-layers`` decoder layers (2).
PEFT runs with its defaults (dense delta per adapter, ``torch.linalg.svd`` with
``full_matrices=True``) at ``svd_rank = K·r = 128``, where the merge is exact; eigenmix
runs ``linear`` (the same weighted sum) and converts the result to rank-128 factors.
``max_rel_diff`` is the largest per-layer relative Frobenius difference of the two deltas.

The end-to-end part writes 8 PEFT adapter folders for 32 decoder layers (224 layers) and
times ``eigenmix merge``'s own path (read, merge, write a rank-128 adapter) in a fresh
process, whose peak RSS (``VmHWM``) is ``peak_rss_mb``; it runs first, before this
process holds the PEFT model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench_common import write_result

HIDDEN, INTER = 4096, 11008
SHAPES = {  # (out, in)
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN), "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTER),
}  # fmt: skip


def layer_names(n_layers: int) -> list[str]:
    return [f"model.layers.{i}.{name}" for i in range(n_layers) for name in SHAPES]


def random_factors(n_layers: int, k: int, r: int, seed: int) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        factors = {}
        for name in layer_names(n_layers):
            m, n = SHAPES[name.split(".", 3)[3]]
            factors[name] = (torch.randn(m, r, generator=g) * 0.01, torch.randn(r, n, generator=g) / n**0.5)
        out.append(factors)
    return out


class Shapes(nn.Module):
    """Only the Linear layers of a Llama-7B decoder stack (uninitialised weights)."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList()
        for _ in range(n_layers):
            block = nn.Module()
            block.self_attn, block.mlp = nn.Module(), nn.Module()
            for name, (m, n) in SHAPES.items():
                part, leaf = name.split(".")
                setattr(getattr(block, part), leaf, nn.Linear(n, m, bias=False, device="meta"))
            self.model.layers.append(block)


def peft_side(factors, r: int, alpha: float) -> tuple[float, dict[str, torch.Tensor]]:
    from peft import LoraConfig, get_peft_model

    n_layers = len(factors[0]) // len(SHAPES)
    model = Shapes(n_layers).to_empty(device="cpu")
    targets = sorted({n.split(".")[-1] for n in SHAPES})
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    model = get_peft_model(model, config, adapter_name="a0")
    for i in range(1, len(factors)):
        model.add_adapter(f"a{i}", config)
    with torch.no_grad():
        for i, fac in enumerate(factors):
            for name, (B, A) in fac.items():
                layer = model.base_model.model.get_submodule(name)
                layer.lora_B[f"a{i}"].weight.copy_(B)
                layer.lora_A[f"a{i}"].weight.copy_(A)
    names = [f"a{i}" for i in range(len(factors))]
    start = time.perf_counter()
    model.add_weighted_adapter(names, [1.0] * len(names), "merged", combination_type="svd", svd_rank=r * len(names))
    seconds = time.perf_counter() - start
    deltas = {name: model.base_model.model.get_submodule(name).get_delta_weight("merged").detach() for name in factors[0]}
    return seconds, deltas


def eigenmix_side(factors, r: int, alpha: float, repeats: int = 3) -> tuple[float, dict]:
    """Median of ``repeats`` runs (the first call also pays for thread-pool start-up)."""
    import eigenmix
    from eigenmix.io.merged_output import spectral_form
    from eigenmix.modules import LowRankDelta, Module

    modules = [Module(f"a{i}", {n: LowRankDelta(B, A, alpha / r) for n, (B, A) in fac.items()}) for i, fac in enumerate(factors)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        merged = eigenmix.merge(modules, "linear")
        low = {name: spectral_form(name, d, r * len(factors))[0].lowrank() for name, d in merged.layers.items()}
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], low


def write_adapters(root: Path, n_layers: int, k: int, r: int, alpha: float, seed: int) -> list[Path]:
    from safetensors.torch import save_file

    folders = []
    for i, fac in enumerate(random_factors(n_layers, k, r, seed)):
        folder = root / f"adapter{i}"
        folder.mkdir()
        tensors = {}
        for name, (B, A) in fac.items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = A.contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = B.contiguous()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": sorted({n.split(".")[-1] for n in SHAPES})}
        (folder / "adapter_config.json").write_text(json.dumps(config))
        folders.append(folder)
    return folders


END_TO_END = """
import json, sys, time
from pathlib import Path
start = time.perf_counter()
from eigenmix.io.atomic import destination
from eigenmix.merging.config import MergeConfig
from eigenmix.merging.run import run_merge
folders, out = json.loads(sys.argv[1]), Path(sys.argv[2])
config = MergeConfig(method="linear", modules=[{"path": f} for f in folders])
t0 = time.perf_counter()
run = run_merge(config, destination(out))
# VmHWM resets at exec (ru_maxrss would carry the parent's figure over)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - t0, "seconds_with_imports": time.perf_counter() - start,
                  "layers": len(run.layers), "peak_rss_mb": hwm / 1024}))
"""


def end_to_end(n_layers: int, k: int, r: int, alpha: float, seed: int, repeats: int = 3) -> dict:
    """``repeats`` fresh-process runs on the same adapters; the disk is synced before each,
    so writeback of earlier files does not land inside the timed run."""
    runs = []
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        folders = write_adapters(Path(tmp), n_layers, k, r, alpha, seed)
        for i in range(repeats):
            os.sync()
            done = subprocess.run(
                [sys.executable, "-c", END_TO_END, json.dumps([str(f) for f in folders]), str(Path(tmp) / f"merged{i}")],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    seconds = sorted(r["seconds"] for r in runs)
    return {
        "layers": runs[0]["layers"], "seconds": seconds[len(seconds) // 2], "seconds_min": seconds[0], "runs": seconds,
        "seconds_with_imports": sorted(r["seconds_with_imports"] for r in runs)[len(runs) // 2],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--decoder-layers", type=int, default=2, help="decoder layers in the PEFT comparison")
    parser.add_argument("--e2e-layers", type=int, default=32, help="decoder layers in the end-to-end run (0: skip)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    alpha = float(args.r)

    # the end-to-end run goes first, while this process is still small
    e2e = end_to_end(args.e2e_layers, args.k, args.r, alpha, args.seed) if args.e2e_layers else None
    factors = random_factors(args.decoder_layers, args.k, args.r, args.seed)
    eig_s, eig = eigenmix_side(factors, args.r, alpha)
    peft_s, peft = peft_side(factors, args.r, alpha)
    diffs = []
    for name, expected in peft.items():
        got = eig[name].dense().double()
        diffs.append(float((got - expected.double()).norm() / expected.double().norm()))
    result = {
        "k": args.k, "r": args.r, "decoder_layers": args.decoder_layers, "layers": len(peft),
        "peft_seconds": peft_s, "eigenmix_seconds": eig_s, "speedup": peft_s / eig_s, "max_rel_diff": max(diffs),
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip
    if e2e is not None:
        result |= {
            "e2e_decoder_layers": args.e2e_layers, "e2e_layers": e2e["layers"], "e2e_seconds": e2e["seconds"],
            "e2e_seconds_min": e2e["seconds_min"], "e2e_runs": e2e["runs"],
            "e2e_seconds_with_imports": e2e["seconds_with_imports"], "peak_rss_mb": e2e["peak_rss_mb"],
        }  # fmt: skip
    write_result(args.json, result)


if __name__ == "__main__":
    main()
