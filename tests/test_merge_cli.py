"""``eigenmix merge`` end to end on tiny PEFT adapters: the written adapter loads in PEFT
and computes the merged delta; full-model output; every bad config gets one line, exit
code 2, and no output folder."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import LoraConfig
from safetensors.torch import load_file, save_file

import eigenmix
from common import base_model, inputs, load_adapter, make_adapter
from common import run_cli as run
from eigenmix.io import read_lora_adapter

TARGETS = ["q", "v", "out"]


@pytest.fixture
def adapters(tmp_path):
    folders = []
    for i, (r, alpha) in enumerate([(2, 4), (3, 6)]):
        folder = tmp_path / f"ad{i}"
        make_adapter(folder, LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS), seed=20 + i)
        folders.append(folder)
    return folders


def write_config(tmp_path, **config):
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def modules_cfg(folders, weights=(1.0, 0.5)):
    return [{"path": f.name, "weight": w} for f, w in zip(folders, weights, strict=True)]


@pytest.mark.parametrize("method", ["tsv", "ties", "spectral"])
def test_merged_adapter_loads_in_peft_with_the_merged_outputs(tmp_path, adapters, monkeypatch, method):
    cfg = write_config(tmp_path, method=method, modules=modules_cfg(adapters))
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 0
    merged = eigenmix.merge([read_lora_adapter(f) for f in adapters], method, weights=[1.0, 0.5])
    reference = base_model()
    with torch.no_grad():
        for layer, delta in merged.layers.items():
            reference.get_submodule(layer).weight += delta.dense().float()
        x = inputs()
        assert (load_adapter(tmp_path / "out")(x) - reference(x)).abs().max() <= 1e-5


def test_truncated_rank_reports_retained_energy(tmp_path, adapters, monkeypatch):
    cfg = write_config(tmp_path, method="linear", modules=modules_cfg(adapters), output={"kind": "adapter", "rank": 2})
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert {row["rank"] for row in report["layers"]} == {2}
    assert all(0 < row["retained_energy"] < 1 for row in report["layers"])
    assert read_lora_adapter(tmp_path / "out").layers["encoder.q"].rank == 2


def test_full_model_output(tmp_path, adapters, monkeypatch):
    base = base_model()
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(tmp_path / "base.safetensors"))
    cfg = write_config(tmp_path, method="linear", modules=modules_cfg(adapters), base_model="base.safetensors", output={"kind": "full"})
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "full") == 0
    written = load_file(str(tmp_path / "full" / "model.safetensors"))
    merged = eigenmix.merge([read_lora_adapter(f) for f in adapters], "linear", weights=[1.0, 0.5])
    for name, tensor in base.state_dict().items():
        layer = name.removesuffix(".weight")
        expected = tensor + merged.layers[layer].dense().float() if layer in merged.layers else tensor
        assert torch.allclose(written[name], expected, atol=1e-6), name


def test_heads_are_carried_per_task(tmp_path, monkeypatch):
    folders = []
    for i in range(2):
        folders.append(tmp_path / f"h{i}")
        make_adapter(folders[-1], LoraConfig(r=2, lora_alpha=2, target_modules=["q"], modules_to_save=["head"]), seed=i)
    cfg = write_config(tmp_path, method="linear", modules=modules_cfg(folders))
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 0
    for i in range(2):
        head = load_file(str(tmp_path / "out" / "extras" / f"h{i}.safetensors"))
        assert torch.equal(head["head.weight"], read_lora_adapter(folders[i]).extras["head.weight"])
    cfg = write_config(tmp_path, method="linear", modules=modules_cfg(folders), extras="refuse")
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out2") == 2
    assert not (tmp_path / "out2").exists()


def test_dry_run_writes_nothing(tmp_path, adapters, monkeypatch, capsys):
    cfg = write_config(tmp_path, method="ties", modules=modules_cfg(adapters))
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out", "--dry-run") == 0
    assert "dry run" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def set_base(folder, base_id):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_id
    (folder / "adapter_config.json").write_text(json.dumps(config))


def other_base_adapter(tmp_path):
    """Two adapters whose configs name different base models."""
    folder = tmp_path / "other"
    make_adapter(folder, LoraConfig(r=2, lora_alpha=2, target_modules=TARGETS))
    set_base(folder, "someone/else")
    set_base(tmp_path / "ad0", "tiny/base")
    return folder


def other_shape_adapter(tmp_path):
    folder = tmp_path / "other"
    make_adapter(folder, LoraConfig(r=2, lora_alpha=2, target_modules=["c_attn"]), kind="conv1d")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    renamed = {k.replace("c_attn", "encoder.q"): v for k, v in tensors.items()}
    save_file(renamed, str(folder / "adapter_model.safetensors"))
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["q"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def nan_adapter(tmp_path):
    """An adapter whose last layer holds a NaN: found only when that layer is merged."""
    folder = tmp_path / "nan"
    make_adapter(folder, LoraConfig(r=2, lora_alpha=2, target_modules=TARGETS))
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors["base_model.model.encoder.out.lora_A.weight"][0, 0] = float("nan")
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


BAD = {
    "unknown key": (lambda tp, ad: {"method": "ties", "modules": modules_cfg(ad), "colour": "red"}, "colour: unknown key"),
    "unknown method": (lambda tp, ad: {"method": "tiess", "modules": modules_cfg(ad)}, "unknown merge method 'tiess'"),
    "wrong parameter type": (lambda tp, ad: {"method": "ties", "parameters": {"density": "half"}, "modules": modules_cfg(ad)}, "density"),
    "unknown parameter": (lambda tp, ad: {"method": "ties", "parameters": {"k": 3}, "modules": modules_cfg(ad)}, "no parameter 'k'"),
    "missing file": (lambda tp, ad: {"method": "ties", "modules": [{"path": "nope"}, *modules_cfg(ad)[:1]]}, "does not exist"),
    "no modules": (lambda tp, ad: {"method": "ties", "modules": []}, "modules"),
    "bad rank": (lambda tp, ad: {"method": "ties", "modules": modules_cfg(ad), "output": {"rank": 0}}, "output.rank"),
    "full without base": (lambda tp, ad: {"method": "ties", "modules": modules_cfg(ad), "output": {"kind": "full"}}, "needs 'base_model'"),
    "different base models": (
        lambda tp, ad: {"method": "ties", "modules": [*modules_cfg(ad)[:1], {"path": other_base_adapter(tp).name}]},
        "different base models",
    ),
    "different shapes": (
        lambda tp, ad: {"method": "ties", "modules": [*modules_cfg(ad)[:1], {"path": other_shape_adapter(tp).name}]},
        "has shape",
    ),
    "NaN found mid-merge": (
        lambda tp, ad: {"method": "linear", "modules": [*modules_cfg(ad)[:1], {"path": nan_adapter(tp).name}]},
        "NaN/Inf",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_configs_get_one_line_and_no_output(tmp_path, adapters, monkeypatch, capsys, case):
    make, words = BAD[case]
    cfg = write_config(tmp_path, **make(tmp_path, adapters))
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and words in err, err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_existing_output_needs_force(tmp_path, adapters, monkeypatch):
    cfg = write_config(tmp_path, method="linear", modules=modules_cfg(adapters))
    (tmp_path / "out").mkdir()
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 2
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out", "--force") == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_methods_lists_every_method(monkeypatch, capsys):
    assert run(monkeypatch, "methods") == 0
    out = capsys.readouterr().out
    for m in eigenmix.merging.all_methods():
        assert m.name in out
