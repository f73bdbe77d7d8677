"""Tuning on the real encoder: all-MiniLM-L6-v2 with two tiny trained adapters. The tuned
composition exported as a PEFT adapter reproduces the live model's logits; ``eigenmix
tune`` writes everything atomically and repeats itself for a fixed seed."""

from __future__ import annotations

import json
import shutil

import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file

from common import run_cli
from eigenmix.data import load_tasks
from eigenmix.harness.evaluator import Evaluator, Head
from eigenmix.harness.splits import carve
from eigenmix.harness.tuning import TuneSpec, head_logits, task_data, tune_tasks
from eigenmix.inputs import mean_pool
from eigenmix.io import read_lora_adapter, write_lora_adapter
from eigenmix.train import load_encoder
from eigenmix.tune import TuneSettings, export_module

TASKS = ("trec", "cola")


def head(folder) -> Head:
    t = load_file(str(folder / "head.safetensors"))
    return Head(t["weight"], t["bias"])


def test_exported_tuned_composition_reproduces_the_live_model_through_peft(minilm_adapters, tmp_path):
    tasks = [carve(t, 8, 0, 0) for t in load_tasks(minilm_adapters / "data", names=list(TASKS))]
    modules = [read_lora_adapter(minilm_adapters / "adapters" / t.name, name=t.name) for t in tasks]
    heads = {t.name: head(minilm_adapters / "adapters" / t.name) for t in tasks}
    ev = Evaluator(32)
    spec = TuneSpec(rows=16, level="lambda+mu", settings=TuneSettings(steps=4, lr=0.2, eval_every=2, patience=5))
    comp, result = tune_tasks(spec, modules, tasks, heads, ev, seed=0)
    assert result.steps == 4 and result.n_coefficients > 0
    rows = tasks[0].task.test[:12]
    inputs = task_data(ev, rows, labeled=False).inputs
    with torch.no_grad():
        live = head_logits(ev, heads["trec"], inputs)
        assert not torch.allclose(comp.lambdas(next(iter(comp.factors))), comp.factors[next(iter(comp.factors))].lam0.float())
    comp.detach_hooks()
    folder = write_lora_adapter(export_module(comp, base_model=modules[0].base_model), tmp_path / "tuned")
    encoder, _ = load_encoder()
    peft = PeftModel.from_pretrained(encoder, str(folder)).eval()
    with torch.no_grad():
        pooled = mean_pool(peft(**inputs).last_hidden_state, inputs["attention_mask"])
        reloaded = pooled @ heads["trec"].weight.T + heads["trec"].bias
    assert torch.allclose(reloaded, live, atol=1e-5, rtol=1e-5)


def write_config(trained, path, **tune) -> None:
    config = {
        "modules": [{"path": str(trained / "adapters" / t)} for t in TASKS],
        "data_dir": str(trained / "data"),
        "tune": {"rows": 16, "settings": {"steps": 3, "eval_every": 1}, **tune},
        "val_rows": 8,
    }
    path.write_text(yaml.safe_dump(config))


def test_tune_cli_writes_everything_and_repeats_itself(minilm_adapters, tmp_path, monkeypatch, capsys):
    write_config(minilm_adapters, tmp_path / "tune.yaml")
    for out in ("a", "b"):
        assert run_cli(monkeypatch, "tune", tmp_path / "tune.yaml", "--out", tmp_path / out) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    names = sorted(p.name for p in a.iterdir())
    files = ["adapter_config.json", "adapter_model.safetensors", "coefficients.json", "coefficients.safetensors", "heads"]
    files.append("tune_report.json")
    assert names == files
    assert sorted(p.name for p in (a / "heads").iterdir()) == ["cola.safetensors", "heads.json", "trec.safetensors"]
    ca, cb = load_file(str(a / "coefficients.safetensors")), load_file(str(b / "coefficients.safetensors"))
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    report = json.loads((a / "tune_report.json").read_text())
    assert report["result"]["steps"] == 3 and len(report["result"]["history"]) == 4
    summary = json.loads((a / "coefficients.json").read_text())
    assert summary["modules"] == ["trec", "cola"] and len(summary["layers"]) == 36
    capsys.readouterr()
    assert run_cli(monkeypatch, "inspect", a) == 0
    assert "learned coefficients" in capsys.readouterr().out


def test_tune_cli_bad_input_gets_one_line_and_writes_nothing(minilm_adapters, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(minilm_adapters / "adapters" / "trec", broken)
    (broken / "head.json").unlink()
    config = {"modules": [{"path": str(broken)}], "data_dir": str(minilm_adapters / "data")}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    assert run_cli(monkeypatch, "tune", tmp_path / "bad.yaml", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "has no head.json" in err and len(err.strip().splitlines()) == 1
    write_config(minilm_adapters, tmp_path / "cma.yaml", search="cma")
    assert run_cli(monkeypatch, "tune", tmp_path / "cma.yaml", "--out", tmp_path / "out") == 2
    assert "granularity 'module'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    write_config(minilm_adapters, tmp_path / "ok.yaml")
    assert run_cli(monkeypatch, "tune", tmp_path / "ok.yaml", "--out", tmp_path / "taken") == 2
    assert "already exists" in capsys.readouterr().err


def test_tune_config_names_its_base_model(minilm_adapters, tmp_path, monkeypatch, capsys):
    """``base_model``: a local encoder folder or all-MiniLM-L6-v2's id (default: the adapters');
    anything else is one line before any work."""
    from eigenmix.harness.tune_config import load_tune_config
    from eigenmix.train import MINILM_ID, minilm_path

    write_config(minilm_adapters, tmp_path / "tune.yaml")
    assert load_tune_config(tmp_path / "tune.yaml").base_model is None
    for base in (MINILM_ID, str(minilm_path())):
        config = yaml.safe_load((tmp_path / "tune.yaml").read_text())
        (tmp_path / "named.yaml").write_text(yaml.safe_dump({**config, "base_model": base}))
        assert load_tune_config(tmp_path / "named.yaml").base_model == base
    (tmp_path / "named.yaml").write_text(yaml.safe_dump({**config, "base_model": "someone/some-model"}))
    assert run_cli(monkeypatch, "tune", tmp_path / "named.yaml", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "base model 'someone/some-model': not a local model folder" in " ".join(err.split()) and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
