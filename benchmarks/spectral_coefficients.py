"""The data-free coefficients λ of eigenmix's ``spectral`` merge on a set of adapters:
how far the overlap rule moves each module direction from 1 (Task Arithmetic).

    python benchmarks/spectral_coefficients.py --bench benchmarks/results/multitask_merge/results.json \
        --json benchmarks/results/spectral_coefficients.json

``--bench`` takes the 8 task adapters of a merge-benchmark run from the adapter cache (the
same cache entries the run used: its data, recipe and seed); adapter folders can be given
instead. Each layer is decomposed in the joint basis and λ of every module direction is
recorded: mean, minimum, σ-weighted mean and the share below 0.99.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench_common import write_result
from eigenmix.io import read_lora_adapter
from eigenmix.merging.methods.spectral import spectral_coefficients
from eigenmix.modules import layer_spectra


def bench_adapters(results: Path, cache_dir: Path) -> list[Path]:
    """The cache folders of the adapters a merge-benchmark run trained (or found cached)."""
    from eigenmix.bench.cache import entry
    from eigenmix.bench.runner import load_bench_tasks
    from eigenmix.bench.settings import BenchSettings
    from eigenmix.train import MINILM_ID

    config = json.loads(results.read_text())["config"]
    settings = BenchSettings.model_validate({k: v for k, v in config.items() if k in BenchSettings.model_fields})
    data_dir = None if config.get("data_dir", "bundled") == "bundled" else Path(config["data_dir"])
    tasks = load_bench_tasks(settings, data_dir)
    folders = [entry(cache_dir, "adapters", t.task, {"recipe": settings.recipe.model_dump(), "base": MINILM_ID}) for t in tasks]
    missing = [f for f in folders if not f.is_dir()]
    if missing:
        raise SystemExit(f"{missing[0]}: not in the cache; run the benchmark first")
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", type=Path, nargs="*", help="PEFT adapter folders (instead of --bench)")
    parser.add_argument("--bench", type=Path, help="a merge benchmark's results.json: its adapters, from the cache")
    parser.add_argument("--cache-dir", type=Path, default=None, help="the adapter cache (default: ~/.cache/eigenmix)")
    parser.add_argument("--json", type=Path, required=True, help="where to write the result")
    args = parser.parse_args()
    if args.bench is not None:
        from eigenmix.bench.cache import default_cache_dir

        folders = bench_adapters(args.bench, args.cache_dir or default_cache_dir())
    else:
        folders = list(args.adapters)
    modules = [read_lora_adapter(f, name=f.name) for f in folders]
    lambdas, sigmas = [], []
    for layer in modules[0].layers:
        spectra = layer_spectra([m.layers[layer] for m in modules], [1.0] * len(modules))
        lam, _ = spectral_coefficients(spectra)
        lambdas += lam
        sigmas += [spectra.sigma[k] for k in range(spectra.k)]
    lam, sig = torch.cat(lambdas), torch.cat(sigmas)
    write_result(
        args.json,
        {
            "command": " ".join(["python", *sys.argv]),
            "adapters": [f.name for f in folders],
            "layers": len(modules[0].layers),
            "directions": lam.numel(),
            "lambda_mean": float(lam.mean()),
            "lambda_min": float(lam.min()),
            "lambda_sigma_weighted_mean": float((lam * sig).sum() / sig.sum()),
            "share_below_0.99": float((lam < 0.99).double().mean()),
        },
    )


if __name__ == "__main__":
    main()
