"""The console script: version, inspect and overlap tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

from common import make_adapter
from common import run_cli as run
from eigenmix import __version__


def test_version_from_the_installed_script():
    script = Path(sys.executable).parent / "eigenmix"  # the venv's console script
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"eigenmix {__version__}"


def test_inspect_table_and_json(tmp_path, monkeypatch, capsys):
    make_adapter(tmp_path / "a", LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v", "out"]))
    assert run(monkeypatch, "inspect", tmp_path / "a", "--json", tmp_path / "r.json") == 0
    out = capsys.readouterr().out
    for layer in ("encoder.q", "encoder.v", "encoder.out"):
        assert layer in out
    assert "3 layers, total rank 12" in out
    report = json.loads((tmp_path / "r.json").read_text())
    q = next(r for r in report["layers"] if r["layer"] == "encoder.q")
    assert q["shape"] == [10, 12] and q["rank"] == 4 and len(q["singular_values"]) == 4
    assert 1 <= q["rank_90"] <= q["rank_99"] <= 4


def test_overlap_of_an_adapter_with_itself_is_one(tmp_path, monkeypatch, capsys):
    make_adapter(tmp_path / "a", LoraConfig(r=2, lora_alpha=2, target_modules=["q", "out"]))
    assert run(monkeypatch, "overlap", tmp_path / "a", tmp_path / "a") == 0
    out = capsys.readouterr().out
    assert "mean column overlap 1.000" in out and "mean row overlap 1.000" in out


def test_usage_error_exits_2(monkeypatch):
    assert run(monkeypatch, "inspect") == 2


@pytest.mark.parametrize("args", [["demo", "--tasks", "sst2"], ["demo", "--tasks", "sst2,nope"]])
def test_demo_rejects_bad_tasks_before_training(tmp_path, monkeypatch, capsys, args):
    assert run(monkeypatch, *args, "--out", tmp_path / "demo") == 2
    assert not (tmp_path / "demo").exists()


def test_overlap_of_adapters_of_different_base_models_is_refused(tmp_path, monkeypatch, capsys):
    from common import raw_adapter

    raw_adapter(tmp_path / "a", {"enc.q": (10, 12)}, base="org/model-a")
    raw_adapter(tmp_path / "b", {"enc.q": (10, 12)}, base="org/model-b")
    raw_adapter(tmp_path / "c", {"enc.other": (10, 12)}, base="org/model-a")
    assert run(monkeypatch, "overlap", tmp_path / "a", tmp_path / "b") == 2
    assert "different base models" in capsys.readouterr().err
    assert run(monkeypatch, "overlap", tmp_path / "a", tmp_path / "c") == 2
    assert "share no matrix layer" in capsys.readouterr().err


def test_inspect_of_a_half_precision_adapter_with_large_values_is_finite(tmp_path, monkeypatch):
    """Factors whose product overflows float16 (~6.5e4) still get their true singular values."""
    from safetensors.torch import save_file

    from common import raw_adapter

    raw_adapter(tmp_path / "a", {"enc.q": (10, 12)})
    A = torch.full((4, 12), 30.0, dtype=torch.float16)
    B = torch.full((10, 4), 300.0, dtype=torch.float16)
    tensors = {"base_model.model.enc.q.lora_A.weight": A, "base_model.model.enc.q.lora_B.weight": B}
    save_file(tensors, str(tmp_path / "a" / "adapter_model.safetensors"))
    assert run(monkeypatch, "inspect", tmp_path / "a", "--json", tmp_path / "r.json") == 0
    [layer] = json.loads((tmp_path / "r.json").read_text())["layers"]
    expected = float(torch.linalg.svdvals(B.double() @ A.double())[0]) * 2.0  # scale alpha / r = 2
    assert layer["singular_values"][0] == pytest.approx(expected, rel=1e-9) and expected > 6.6e4
