"""The console script: version, inspect and overlap tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
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
