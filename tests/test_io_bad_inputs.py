"""Every bad adapter input gets one specific package exception from the API, one line and
exit code 2 from the CLI, and nothing is written."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from common import make_adapter, run_cli
from eigenmix.errors import InvalidInputError, NonFiniteError, ShapeMismatchError, UnsupportedAdapterError
from eigenmix.io import read_lora_adapter

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


@pytest.fixture
def adapter(tmp_path):
    folder = tmp_path / "adapter"
    make_adapter(folder, LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v", "out"]))
    return folder


def edit_config(folder, **changes):
    config = json.loads((folder / CONFIG).read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / CONFIG).write_text(json.dumps(config))


def edit_weights(folder, fn):
    tensors = load_file(str(folder / WEIGHTS))
    fn(tensors)
    save_file(tensors, str(folder / WEIGHTS))


def no_r(f):
    edit_config(f, r=None)


def corrupt(f):
    (f / WEIGHTS).write_bytes(b"\x07\x00garbage that is no safetensors header")


def truncated(f):
    data = (f / WEIGHTS).read_bytes()
    (f / WEIGHTS).write_bytes(data[: len(data) // 2])


def pickle_only(f):
    tensors = load_file(str(f / WEIGHTS))
    torch.save(tensors, f / "adapter_model.bin")
    (f / WEIGHTS).unlink()


def wrong_rank(f):
    edit_config(f, r=5)


def wrong_shape(f):
    edit_weights(f, lambda t: t.update({"base_model.model.encoder.q.lora_B.weight": torch.zeros(10, 3)}))


def nan_weight(f):
    edit_weights(f, lambda t: t["base_model.model.encoder.v.lora_A.weight"].__setitem__((0, 0), float("nan")))


def inf_weight(f):
    edit_weights(f, lambda t: t["base_model.model.encoder.v.lora_B.weight"].__setitem__((1, 1), float("inf")))


def dora_config(f):
    edit_config(f, use_dora=True)


def dora_tensors(f):
    edit_weights(f, lambda t: t.update({"base_model.model.encoder.q.lora_magnitude_vector": torch.ones(10)}))


def ia3(f):
    edit_config(f, peft_type="IA3")


def lora_bias(f):
    edit_config(f, lora_bias=True)


def unknown_field(f):
    edit_config(f, some_future_variant={"on": True})


def missing_B(f):
    edit_weights(f, lambda t: t.pop("base_model.model.encoder.out.lora_B.weight"))


def bad_json(f):
    (f / CONFIG).write_text("{not json")


def integer_factor(f):
    edit_weights(f, lambda t: t.update({"base_model.model.encoder.q.lora_A.weight": torch.ones(4, 12, dtype=torch.int64)}))


def targets_nothing(f):
    edit_config(f, target_modules=["nope"])


def targets_some(f):
    edit_config(f, target_modules=["q", "v"])  # the file also holds encoder.out


CASES = {
    "config without r": (no_r, InvalidInputError, "no 'r'"),
    "corrupt safetensors": (corrupt, InvalidInputError, "not a readable safetensors file"),
    "truncated safetensors": (truncated, InvalidInputError, "not a readable safetensors file"),
    ".bin pickle": (pickle_only, InvalidInputError, "pickle file"),
    "rank disagrees with config": (wrong_rank, ShapeMismatchError, "disagree with r=5"),
    "factor shapes disagree": (wrong_shape, ShapeMismatchError, "encoder.q"),
    "NaN": (nan_weight, NonFiniteError, "NaN/Inf"),
    "Inf": (inf_weight, NonFiniteError, "NaN/Inf"),
    "DoRA config": (dora_config, UnsupportedAdapterError, "DoRA"),
    "DoRA tensors": (dora_tensors, UnsupportedAdapterError, "DoRA"),
    "non-LoRA type": (ia3, UnsupportedAdapterError, "PEFT type IA3"),
    "lora_bias": (lora_bias, UnsupportedAdapterError, "lora_bias"),
    "unknown field": (unknown_field, UnsupportedAdapterError, "some_future_variant"),
    "missing lora_B": (missing_B, ShapeMismatchError, "no lora_B.weight"),
    "bad JSON": (bad_json, InvalidInputError, "not valid JSON"),
    "integer factor": (integer_factor, InvalidInputError, "must be floating point"),
    "target_modules matches none": (targets_nothing, InvalidInputError, "does not select it"),
    "target_modules misses a layer": (targets_some, InvalidInputError, "encoder.out"),
}


@pytest.mark.parametrize("breaker", [targets_nothing, targets_some])
def test_peft_refuses_what_eigenmix_refuses(adapter, breaker):
    """An adapter whose target_modules does not select its layers: PEFT does not load its
    weights as written either (no target found, or weights that would be left unused)."""
    from peft import PeftModel

    from common import base_model

    breaker(adapter)
    try:
        model = PeftModel.from_pretrained(base_model(), str(adapter))
    except ValueError as err:
        assert "not found" in str(err) or "Target modules" in str(err)
        return
    assert not hasattr(model.base_model.model.encoder["out"], "lora_A")  # loaded, but encoder.out's factors ignored


@pytest.mark.parametrize("case", sorted(CASES))
def test_api_raises_specific_error(adapter, case):
    breaker, error, words = CASES[case]
    breaker(adapter)
    with pytest.raises(error, match=words):
        read_lora_adapter(adapter)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_prints_one_line_and_exits_2(adapter, tmp_path, monkeypatch, capsys, case):
    breaker, _, words = CASES[case]
    breaker(adapter)
    report = tmp_path / "report.json"
    assert run_cli(monkeypatch, "inspect", adapter, "--json", report) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and words.split()[0] in err
    assert not report.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # nothing else was written


def test_missing_folder(tmp_path, monkeypatch, capsys):
    with pytest.raises(InvalidInputError, match="no such adapter folder"):
        read_lora_adapter(tmp_path / "nope")
    assert run_cli(monkeypatch, "inspect", tmp_path / "nope") == 2
    assert "no such adapter folder" in capsys.readouterr().err


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="not a folder"):
        read_lora_adapter(tmp_path / "x.safetensors")


def test_missing_weights_file(adapter):
    (adapter / WEIGHTS).unlink()
    with pytest.raises(InvalidInputError, match=f"no {WEIGHTS}"):
        read_lora_adapter(adapter)
