"""PEFT LoRA adapters: read → write → PeftModel.from_pretrained reproduces the outputs,
and every layer's delta equals PEFT's own ``get_delta_weight``."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig

from common import base_model, inputs, load_adapter, make_adapter
from eigenmix.io import read_lora_adapter, write_lora_adapter
from eigenmix.modules import LowRankDelta, Module

CONFIGS = {
    "plain": dict(kind="tiny", config=LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v", "out"])),
    "patterns": dict(
        kind="tiny",
        config=LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v", "out"], rank_pattern={"out": 2, "v": 3}, alpha_pattern={"q": 5}),
    ),
    "rslora": dict(kind="tiny", config=LoraConfig(r=4, lora_alpha=6, target_modules=["q", "v", "out"], use_rslora=True)),
    "modules_to_save": dict(kind="tiny", config=LoraConfig(r=3, lora_alpha=3, target_modules=["q", "out"], modules_to_save=["head"])),
    "fan_in_fan_out": dict(kind="conv1d", config=LoraConfig(r=3, lora_alpha=9, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
}


def peft_delta(model, layer: str) -> torch.Tensor:
    """PEFT's own delta of one layer, in (out, in) orientation."""
    module = model.base_model.model.get_submodule(layer)
    delta = module.get_delta_weight("default")
    return delta.T if module.fan_in_fan_out else delta


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_read_matches_peft_delta_weights(tmp_path, case):
    spec = CONFIGS[case]
    model = make_adapter(tmp_path / "a", spec["config"], kind=spec["kind"])
    module = read_lora_adapter(tmp_path / "a")
    assert set(module.layers) == {n for n, m in model.base_model.model.named_modules() if hasattr(m, "lora_A")}
    for layer, delta in module.layers.items():
        assert isinstance(delta, LowRankDelta)
        assert torch.allclose(delta.dense(), peft_delta(model, layer), atol=1e-6)


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_roundtrip_outputs_equal(tmp_path, case):
    spec = CONFIGS[case]
    model = make_adapter(tmp_path / "a", spec["config"], kind=spec["kind"])
    x = inputs(spec["kind"])
    with torch.no_grad():
        expected = model(x)
    write_lora_adapter(read_lora_adapter(tmp_path / "a"), tmp_path / "b")
    with torch.no_grad():
        got = load_adapter(tmp_path / "b", spec["kind"])(x)
    assert (got - expected).abs().max() <= 1e-5


def test_modules_to_save_head_is_carried(tmp_path):
    make_adapter(tmp_path / "a", CONFIGS["modules_to_save"]["config"])
    module = read_lora_adapter(tmp_path / "a")
    assert set(module.extras) == {"head.weight", "head.bias"}
    assert module.peft is not None and module.peft.modules_to_save == ("head",)


def test_rslora_scale(tmp_path):
    make_adapter(tmp_path / "a", CONFIGS["rslora"]["config"])
    module = read_lora_adapter(tmp_path / "a")
    assert all(d.scale == pytest.approx(6 / 2.0) for d in module.layers.values())


def test_pattern_scales(tmp_path):
    make_adapter(tmp_path / "a", CONFIGS["patterns"]["config"])
    layers = read_lora_adapter(tmp_path / "a").layers
    assert (layers["encoder.q"].rank, layers["encoder.q"].scale) == (4, 5 / 4)
    assert (layers["encoder.v"].rank, layers["encoder.v"].scale) == (3, 8 / 3)
    assert (layers["encoder.out"].rank, layers["encoder.out"].scale) == (2, 8 / 2)


def test_modified_module_writes_patterns_that_peft_reads_back(tmp_path):
    """New ranks and scales per layer (as a merge produces) survive the PEFT reload."""
    make_adapter(tmp_path / "a", CONFIGS["plain"]["config"])
    module = read_lora_adapter(tmp_path / "a")
    g = torch.Generator().manual_seed(5)
    layers = {
        "encoder.q": module.layers["encoder.q"].spectral().truncate(2),  # spectral, rank 2
        "encoder.v": LowRankDelta(torch.randn(10, 6, generator=g), torch.randn(6, 12, generator=g), 0.37),
        "encoder.out": module.layers["encoder.out"],
    }
    merged = Module("merged", layers, peft=module.peft)
    write_lora_adapter(merged, tmp_path / "b")
    config = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    assert config["rank_pattern"] and config["alpha_pattern"]
    reloaded = load_adapter(tmp_path / "b")
    base = base_model()
    x = inputs()
    with torch.no_grad():
        for name, delta in layers.items():
            lin = base.get_submodule(name)
            lin.weight += delta.dense().to(lin.weight.dtype)
        expected = base(x)
        got = reloaded(x)
    assert (got - expected).abs().max() <= 1e-5
    again = read_lora_adapter(tmp_path / "b")
    for name, delta in layers.items():
        assert torch.allclose(again.layers[name].dense(), delta.dense(), atol=1e-6)


def test_unchanged_module_keeps_its_config(tmp_path):
    make_adapter(tmp_path / "a", CONFIGS["patterns"]["config"])
    write_lora_adapter(read_lora_adapter(tmp_path / "a"), tmp_path / "b")
    a = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    b = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    assert a == b
