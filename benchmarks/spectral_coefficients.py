"""The data-free coefficients λ of eigenmix's ``spectral`` merge on a set of adapters:
how far the overlap rule moves each module direction from 1 (Task Arithmetic).

    python benchmarks/spectral_coefficients.py ~/.cache/eigenmix/adapters --json benchmarks/results/spectral_coefficients.json

Reads every adapter folder under the given folder (the merge benchmark's cache holds its
8 task adapters there), decomposes each layer in the joint basis and records λ of every
module direction: mean, minimum, σ-weighted mean and the share below 0.99.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench_common import write_result
from eigenmix.io import read_lora_adapter
from eigenmix.merging.methods.spectral import spectral_coefficients
from eigenmix.modules import layer_spectra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", type=Path, help="a folder of PEFT adapter folders")
    parser.add_argument("--json", type=Path, required=True, help="where to write the result")
    args = parser.parse_args()
    folders = sorted(p for p in args.adapters.iterdir() if (p / "adapter_config.json").is_file())
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
