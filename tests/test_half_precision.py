"""bf16 and fp16 LoRA adapters — real PEFT adapters saved from a half-precision model — merged
through the installed script by a spectral and an element-wise method, against float64
references computed densely from the same stored values (PEFT refuses SVD merges in half
precision: peft#1353). The merge computes in float32 and writes the adapters' own dtype
(``output.dtype: base``), or float32 when asked."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model

import eigenmix
from common import base_model
from dense_reference import iso_c, linear, ties, tsv
from eigenmix.io import read_lora_adapter
from test_cli_smoke import eigenmix as eigenmix_script
from test_cli_smoke import ok

LAYERS = ("encoder.q", "encoder.v", "encoder.out")
WEIGHTS = (1.0, 0.7, 0.4)
REFERENCES = {
    "task_arithmetic": lambda Ws, w: linear(Ws, w),
    "ties": lambda Ws, w: ties(Ws, w, density=0.5),
    "tsv": lambda Ws, w: tsv(Ws, w),
    "iso_c": lambda Ws, w: iso_c(Ws, w),
}
PARAMS = {"ties": {"density": 0.5}, "task_arithmetic": {"scale": 1.0}}


@pytest.fixture(scope="module", params=[torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def half_adapters(request, tmp_path_factory):
    dtype = request.param
    root = tmp_path_factory.mktemp(str(dtype).removeprefix("torch."))
    folders = []
    for k in range(3):
        model = get_peft_model(copy.deepcopy(base_model()), LoraConfig(r=3, lora_alpha=6, target_modules=["q", "v", "out"]))
        g = torch.Generator().manual_seed(40 + k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.to(dtype).save_pretrained(str(root / f"a{k}"))  # PEFT writes the factors in the model's dtype
        folders.append(root / f"a{k}")
    return dtype, folders


def deltas(folder) -> dict[str, tuple[torch.Tensor, torch.dtype]]:
    """Each layer's ``scale · B A`` from the stored factors in float64, and their stored dtype."""
    module = read_lora_adapter(folder)
    return {n: (d.B.double() @ d.A.double() * d.scale, d.A.dtype) for n, d in module.layers.items()}


def stored_deltas(folder) -> dict[str, torch.Tensor]:
    return {n: delta for n, (delta, _) in deltas(folder).items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", sorted(REFERENCES))
def test_half_precision_adapters_merge_like_float64(half_adapters, method):
    dtype, folders = half_adapters
    assert all(d.A.dtype == dtype for f in folders for d in read_lora_adapter(f).layers.values())
    per_module = [stored_deltas(f) for f in folders]
    modules = [read_lora_adapter(f) for f in folders]
    merged = eigenmix.merge(modules, method, weights=list(WEIGHTS), **PARAMS.get(method, {}))  # Python: float32 results
    for layer in per_module[0]:
        expected = REFERENCES[method]([m[layer] for m in per_module], list(WEIGHTS))
        got = merged.layers[layer].dense().double()
        assert merged.layers[layer].dense().dtype == torch.float32
        assert rel(got, expected) < 1e-5, (layer, rel(got, expected))


@pytest.mark.parametrize("method", ["tsv", "ties"])
def test_the_command_writes_the_adapters_dtype_or_the_one_asked(half_adapters, method, tmp_path):
    dtype, folders = half_adapters
    per_module = [stored_deltas(f) for f in folders]
    modules = [{"path": str(f), "weight": w} for f, w in zip(folders, WEIGHTS, strict=True)]
    body = {"method": method, "parameters": PARAMS.get(method, {}), "modules": modules}
    half = 2e-2 if dtype == torch.bfloat16 else 3e-3  # the factors' own rounding (8 and 11 bits)
    for out_dtype, expected_dtype, tolerance in (("base", dtype, half), ("float32", torch.float32, 1e-5)):
        cfg = tmp_path / f"{out_dtype}.yaml"
        cfg.write_text(yaml.safe_dump({**body, "output": {"kind": "adapter", "dtype": out_dtype}}))
        ok(eigenmix_script("merge", cfg, "--out", tmp_path / out_dtype))
        for layer, (got, stored) in deltas(tmp_path / out_dtype).items():
            expected = REFERENCES[method]([m[layer] for m in per_module], list(WEIGHTS))
            assert stored == expected_dtype and rel(got, expected) < tolerance, (out_dtype, layer, rel(got, expected))
