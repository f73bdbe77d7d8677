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
    "a typo in a key": (
        lambda tp, ad: {"method": "ties", "modlues": modules_cfg(ad)},
        "modlues: unknown key (did you mean 'modules'?); modules: required key missing",
    ),
    "every problem at once": (
        lambda tp, ad: {"method": "ties", "parameters": {"densty": 0.3}, "modules": modules_cfg(ad), "output": {"rank": 0}},
        "2 problems: parameters: method 'ties' has no parameter 'densty' (did you mean 'density'?)",
    ),
    "a typo in a nested key": (
        lambda tp, ad: {"method": "ties", "modules": modules_cfg(ad), "output": {"rnak": 4}},
        "output.rnak: unknown key (did you mean 'rank'?)",
    ),
    "a typo in the method": (
        lambda tp, ad: {"method": "tsvm", "modules": modules_cfg(ad)},
        "unknown merge method 'tsvm' (did you mean 'tsv'?)",
    ),
    "every weight 0": (lambda tp, ad: {"method": "linear", "modules": modules_cfg(ad, (0.0, 0.0))}, "every module weight is 0"),
    "a NaN weight": (lambda tp, ad: {"method": "linear", "modules": modules_cfg(ad, (float("nan"), 1.0))}, "modules.0.weight"),
    "an infinite scale": (
        lambda tp, ad: {"method": "linear", "parameters": {"scale": float("inf")}, "modules": modules_cfg(ad)},
        "parameter 'scale'",
    ),
    "normalize with weights summing to 0": (
        lambda tp, ad: {"method": "linear", "parameters": {"normalize": True}, "modules": modules_cfg(ad, (1.0, -1.0))},
        "sum of the weights",
    ),
    "a boolean weight": (
        lambda tp, ad: {"method": "linear", "modules": [{"path": "ad0", "weight": True}, *modules_cfg(ad)[1:]]},
        "modules.0.weight",
    ),
    "a string scale": (
        lambda tp, ad: {"method": "linear", "parameters": {"scale": "0.3"}, "modules": modules_cfg(ad)},
        "parameter 'scale'",
    ),
    "a weight too large for float32": (
        lambda tp, ad: {"method": "linear", "modules": modules_cfg(ad, (1e300, 1.0))},
        "not finite",
    ),
}


def test_yaml_syntax_errors_give_line_and_column(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("method: ties\nmodules:\n  - {path: a, weight: 1\n  - {path: b}\n")
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{cfg}:4:" in err and "not valid YAML" in err, err


def test_one_module_is_written_scaled(tmp_path, adapters, monkeypatch):
    """One module with task_arithmetic's λ = 0.3: the written adapter is 0.3 × the module,
    as eigenmix.merge gives (the API used to return it unscaled)."""
    cfg = write_config(tmp_path, method="task_arithmetic", modules=modules_cfg(adapters[:1], (1.0,)))
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 0
    written, source = read_lora_adapter(tmp_path / "out"), read_lora_adapter(adapters[0])
    api = eigenmix.merge([source], "task_arithmetic")
    for layer, delta in source.layers.items():
        torch.testing.assert_close(written.layers[layer].dense(), 0.3 * delta.dense(), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(api.layers[layer].dense(), 0.3 * delta.dense(), atol=1e-6, rtol=1e-5)


def test_heads_beside_the_adapters_are_carried(tmp_path, adapters, monkeypatch):
    """eigenmix.train saves head.safetensors and head.json beside each adapter; a merge
    keeps them under heads/ (and refuses them with extras: refuse)."""
    for i, folder in enumerate(adapters):
        save_file({"weight": torch.full((2, 8), float(i)), "bias": torch.zeros(2)}, str(folder / "head.safetensors"))
        (folder / "head.json").write_text(json.dumps({"task": f"task{i}", "label_names": ["a", "b"]}))
    cfg = write_config(tmp_path, method="linear", modules=modules_cfg(adapters))
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 0
    for folder in adapters:
        assert (tmp_path / "out" / "heads" / f"{folder.name}.safetensors").read_bytes() == (folder / "head.safetensors").read_bytes()
    assert json.loads((tmp_path / "out" / "heads" / "heads.json").read_text())["ad1"]["task"] == "task1"
    cfg = write_config(tmp_path, method="linear", modules=modules_cfg(adapters), extras="refuse")
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out2") == 2
    assert not (tmp_path / "out2").exists()


def test_a_rank_above_the_exact_rank_is_reported(tmp_path, adapters, monkeypatch, capsys):
    cfg = write_config(tmp_path, method="linear", modules=modules_cfg(adapters), output={"kind": "adapter", "rank": 64})
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 0
    assert "note: output.rank 64 exceeds the exact rank of 3 layer(s)" in " ".join(capsys.readouterr().out.split())
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["notes"] and all(row["rank"] == row["exact_rank"] == 5 for row in report["layers"])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_configs_get_one_line_and_no_output(tmp_path, adapters, monkeypatch, capsys, case):
    make, words = BAD[case]
    cfg = write_config(tmp_path, **make(tmp_path, adapters))
    assert run(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and words in " ".join(err.split()), err
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
