"""``eigenmix merge`` with a ``calibration:`` section, through the installed script in a fresh
process, on real all-MiniLM-L6-v2 adapters: the merge equals the Python API's on the same
rows, and every bad calibration input is one line, exit code 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import eigenmix
from common import fails_in_process
from eigenmix.compose import gram_statistics
from eigenmix.data.inputs import read_inputs
from eigenmix.harness.calibration_rows import tokenized
from eigenmix.inputs import TextInputs
from eigenmix.io import read_lora_adapter
from eigenmix.modules import Module
from eigenmix.train.encoder import load_encoder
from test_cli_smoke import eigenmix as run
from test_cli_smoke import ok
from test_library_cli import rows_file


@pytest.fixture(scope="module")
def setup(minilm_adapters, tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrated")
    data = minilm_adapters / "data"
    rows = {t: rows_file(root / f"{t}.jsonl", data, t, 8) for t in ("trec", "cola")}
    return root, minilm_adapters / "adapters", rows


def config(root: Path, adapters: Path, rows: dict[str, Path], method: str, **changes) -> Path:
    cfg = {
        "method": method,
        "modules": [{"path": str(adapters / "trec")}, {"path": str(adapters / "cola")}],
        "calibration": {"modules": {t: {"file": str(p), "rows": 6} for t, p in rows.items()}, "max_length": 32, "batch_size": 4},
    }
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path = root / f"{method}-{len(list(root.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def api_merge(adapters: Path, rows: dict[str, Path], method: str) -> Module:
    modules = [read_lora_adapter(adapters / t, name=t) for t in ("trec", "cola")]
    model, tokenizer = load_encoder()
    inputs = TextInputs(tokenizer, 32)
    batches = [tokenized(inputs, read_inputs(rows[t], limit=6), 4) for t in ("trec", "cola")]
    return eigenmix.merge(modules, method, calibration=gram_statistics(model, modules, batches, sketch_above=2048))


@pytest.mark.parametrize("method", ["regmean", "regmean_pp", "spectral_align"])
def test_a_calibrated_merge_through_the_script_equals_the_python_merge(setup, method):
    root, adapters, rows = setup
    out = root / f"out-{method}"
    printed = ok(run("merge", config(root, adapters, rows, method), "--out", out))
    assert "calibration:" in printed
    written = read_lora_adapter(out)
    expected = api_merge(adapters, rows, method if method != "regmean_pp" else "regmean")
    if method == "regmean_pp":  # its first block sees each model alone: RegMean's layers there; later blocks differ
        expected.layers = {n: d for n, d in expected.layers.items() if ".layer.0." in n}
    assert set(expected.layers) <= set(written.layers) and len(written.layers) == 36
    for name, delta in expected.layers.items():
        want = delta.dense()
        assert torch.linalg.norm(written.layers[name].dense() - want) <= 1e-4 * float(torch.linalg.norm(want)), name
    assert json.loads((out / "merge_report.json").read_text())["calibration_rows_used"] == {"trec": 6, "cola": 6}


def _refused(root: Path, cfg: Path, match: str) -> None:
    out = root / "refused"
    done = run("merge", cfg, "--out", out)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0], done.stderr
    assert not out.exists() and not list(root.glob(".refused*"))


def _refused_in_process(monkeypatch, capsys, root: Path, cfg: Path, match: str) -> None:
    out = root / "refused"
    assert match in fails_in_process(monkeypatch, capsys, "merge", cfg, "--out", out), match
    assert not out.exists() and not list(root.glob(".refused*"))


def test_bad_calibration_inputs_are_one_line_and_write_nothing(setup, monkeypatch, capsys):
    """The first bad input through the installed script in a fresh process; the others
    in-process (``fails_in_process``: the same one line, exit code 2)."""
    root, adapters, rows = setup
    (root / "empty.jsonl").write_text("")
    (root / "no-text.jsonl").write_text('{"sentence": "no text field"}\n')
    section = {"max_length": 32}
    missing = {"trec": {"file": str(root / "missing.jsonl")}, "cola": {"file": str(rows["cola"])}}
    _refused(root, config(root, adapters, rows, "regmean", calibration={**section, "modules": missing}), "does not exist")
    cases = [
        ({"calibration": {**section, "modules": {"trec": {"file": str(root / "empty.jsonl")}, "cola": {"file": str(rows["cola"])}}}},
         "has no rows"),
        ({"calibration": {**section, "modules": {"trec": {"file": str(root / "no-text.jsonl")}, "cola": {"file": str(rows["cola"])}}}},
         "no field 'text'"),
        ({"calibration": {**section, "modules": {"trec": {"file": str(rows["trec"])}, "cola": {"file": str(rows["cola"])},
                                                 "sst2": {"file": str(rows["cola"])}}}},
         "no module is named 'sst2'"),
        ({"calibration": {**section, "modules": {"trec": {"file": str(rows["trec"])}}}}, "module 'cola' has no rows"),
        ({"calibration": None}, "method 'regmean' needs calibration rows"),
        ({"calibration": {"max_length": 100000, "modules": {t: {"file": str(p)} for t, p in rows.items()}}}, "exceeds the base model's"),
        ({"calibration": {**section, "modules": {"trec": {"file": str(rows["trec"]), "rows": True}, "cola": {"file": str(rows["cola"])}}}},
         "calibration.modules.trec.rows"),
    ]  # fmt: skip
    for changes, match in cases:
        _refused_in_process(monkeypatch, capsys, root, config(root, adapters, rows, "regmean", **changes), match)
    _refused_in_process(monkeypatch, capsys, root, config(root, adapters, rows, "task_arithmetic"), "uses no calibration rows")
