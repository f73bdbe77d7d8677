"""Conv merge speed: PEFT ``add_weighted_adapter(combination_type="svd")`` against eigenmix on
conv LoRA adapters of EfficientNet-Lite0, producing the same merged deltas, in one run.

    python benchmarks/merge_speed_conv.py --json benchmarks/results/merge_speed_conv.json

K = ``--adapters`` (8) PEFT conv LoRA adapters (rank ``--rank`` 16, random seeded factors)
on every conv of EfficientNet-Lite0 that takes LoRA (the stem, the 1×1 expand and project
convs, the head conv: 33 layers; the depthwise convs are grouped). PEFT runs with its
defaults (a dense delta per adapter and layer, ``torch.linalg.svd`` with
``full_matrices=True``) at one ``svd_rank`` for every layer, which PEFT needs to be at most
each layer's smallest side: the smallest over Lite0's targets (``min(out, in·kh·kw)`` = 16,
block 0's project conv), so most layers are truncated; eigenmix runs ``linear`` (the same
weighted sum, on the kernels' matrix views, factored) and truncates each layer's exact SVD to
the same rank — the same best rank-``svd_rank`` approximation. ``max_rel_diff``: the largest per-layer relative
Frobenius difference of the two merged kernels. Timings: the median of ``--repeats`` runs
each, 2 threads.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_common import write_result
from eigenmix import merge
from eigenmix.io import read_lora_adapter

TARGETS = r"_conv_stem|_blocks\.\d+\._(expand|project)_conv|_conv_head"


def make_adapters(root: Path, k: int, r: int) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    from eigenmix.vision import load_efficientnet_lite0

    base = load_efficientnet_lite0()
    folders = []
    for i in range(k):
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS))
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        folders.append(root / f"a{i}")
        model.save_pretrained(str(folders[-1]))
    return folders


def peft_merge(folders: list[Path], rank: int) -> tuple[float, dict[str, torch.Tensor]]:
    from peft import PeftModel

    from eigenmix.vision import load_efficientnet_lite0

    model = PeftModel.from_pretrained(load_efficientnet_lite0(), str(folders[0]), adapter_name="a0")
    for i, folder in enumerate(folders[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(folders))]
    start = time.perf_counter()
    model.add_weighted_adapter(names, [1.0] * len(names), "merged", combination_type="svd", svd_rank=rank)
    seconds = time.perf_counter() - start
    layers = {
        n: m.get_delta_weight("merged").detach()
        for n, m in model.base_model.model.named_modules()
        if hasattr(m, "lora_A") and "merged" in m.lora_A
    }
    return seconds, layers


def eigenmix_merge(folders: list[Path], rank: int) -> tuple[float, dict[str, torch.Tensor]]:
    modules = [read_lora_adapter(f) for f in folders]  # read before the clock: PEFT's loads are outside its clock too
    start = time.perf_counter()
    merged = merge(modules, "linear")
    low = {name: d.spectral().truncate(rank).lowrank() for name, d in merged.layers.items()}  # rank-K·r factors, as PEFT writes
    seconds = time.perf_counter() - start
    return seconds, {name: d.tensor() for name, d in low.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(Path(tmp), args.adapters, args.rank)
        svd_rank = min(min(shape[0], math.prod(shape[1:])) for shape in read_lora_adapter(folders[0]).shapes().values())
        peft_runs, ours_runs = [], []
        for _ in range(args.repeats):  # alternated: both see the same machine load
            peft_s, expected = peft_merge(folders, svd_rank)
            ours_s, got = eigenmix_merge(folders, svd_rank)
            peft_runs.append(peft_s)
            ours_runs.append(ours_s)
    diffs = {n: float((got[n].double() - expected[n].double()).norm() / expected[n].double().norm()) for n in expected}
    peft_s, ours_s = statistics.median(peft_runs), statistics.median(ours_runs)
    result = {
        "adapters": args.adapters, "rank": args.rank, "svd_rank": svd_rank, "layers": len(expected), "threads": args.threads,
        "peft_svd_seconds": peft_s, "eigenmix_linear_seconds": ours_s, "speedup": peft_s / ours_s,
        "peft_runs": peft_runs, "eigenmix_runs": ours_runs, "max_rel_diff": max(diffs.values()),
        "targets_met": {"parity <= 1e-5": max(diffs.values()) <= 1e-5, ">= 100x faster than PEFT svd": peft_s / ours_s >= 100},
    }  # fmt: skip
    print(result)
    write_result(args.json, result)


if __name__ == "__main__":
    main()
