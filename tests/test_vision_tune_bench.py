"""Tuning and the benchmark on images: conv LoRAs of EfficientNet-Lite0 tuned from a few
labelled PNGs (the exported composition reproduces the live model through PEFT; ``eigenmix
tune`` through the installed script), and ``eigenmix bench vision --quick`` end to end."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel
from PIL import Image
from safetensors.torch import save_file

from common import eigenmix_script, save_random_adapter
from eigenmix.data.images import fashion_mnist
from eigenmix.harness.backbones import load_backbone
from eigenmix.harness.evaluator import Evaluator
from eigenmix.harness.tune_config import load_tune_config
from eigenmix.harness.tune_run import prepare_tune
from eigenmix.harness.tuning import TuneSpec, head_logits, task_data, tune_tasks
from eigenmix.io import write_lora_adapter
from eigenmix.tune import TuneSettings, export_module
from eigenmix.vision import features, inputs, load_efficientnet_lite0

TARGETS = ["_blocks.1._expand_conv", "_blocks.1._project_conv", "_conv_head"]
CLASSES = ("a", "b", "c")


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(eigenmix_script()), *map(str, args)], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two conv adapters with 3-class heads (a, b, c) at 32 px, each with 24 labelled PNGs and a config."""
    root = tmp_path_factory.mktemp("vision_tune")
    lite0 = load_efficientnet_lite0()
    data = fashion_mnist("test", limit=48)
    for i in range(2):
        folder = save_random_adapter(
            lite0, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), root / f"m{i}", seed=60 + i, scale=0.05,
            only="lora_B", base_id="efficientnet-lite0",
        )  # fmt: skip
        g = torch.Generator().manual_seed(70 + i)
        save_file({"weight": torch.randn(3, 1280, generator=g) * 0.1, "bias": torch.zeros(3)}, str(folder / "head.safetensors"))
        (folder / "head.json").write_text(json.dumps({"task": f"t{i}", "label_names": list(CLASSES), "size": 32}))
        pngs = root / f"pngs{i}"
        pngs.mkdir()
        lines = ["file,label"]
        for j in range(24 * i, 24 * (i + 1)):
            Image.fromarray(data.images[j].numpy(), mode="L").save(pngs / f"{j}.png")
            lines.append(f"{j}.png,{CLASSES[int(data.labels[j]) % 3]}")
        (pngs / "labels.csv").write_text("\n".join(lines) + "\n")
    config = {
        "modules": [{"path": f"m{i}", "data": f"pngs{i}"} for i in range(2)],
        "tune": {"rows": 12, "settings": {"objective": "sup", "steps": 4, "lr": 0.2, "eval_every": 2}},
        "val_rows": 6,
    }
    (root / "tune.yaml").write_text(yaml.safe_dump(config))
    return root


def test_exported_tuned_image_composition_reproduces_the_live_model_through_peft(images, tmp_path):
    prepared = prepare_tune(load_tune_config(images / "tune.yaml"))
    assert prepared.image_size == 32 and [len(t.task.train) for t in prepared.tasks] == [18, 18]
    ev = Evaluator(backbone=load_backbone("efficientnet-lite0", image_size=32))
    spec = TuneSpec(rows=12, level="lambda+mu", settings=TuneSettings(steps=4, lr=0.2, eval_every=2, patience=5))
    comp, result = tune_tasks(spec, prepared.modules, prepared.tasks, prepared.heads, ev, seed=0)
    assert result.steps == 4 and result.n_coefficients > 0
    rows = prepared.tasks[0].val
    batch = task_data(ev, rows, labeled=False).inputs
    with torch.no_grad():
        live = head_logits(ev, prepared.heads["t0"], batch)
    comp.detach_hooks()
    folder = write_lora_adapter(export_module(comp, base_model="efficientnet-lite0"), tmp_path / "tuned")
    peft = PeftModel.from_pretrained(load_efficientnet_lite0(), str(folder)).eval()
    with torch.no_grad():
        pixels = inputs(32).pixels(torch.stack([r.image for r in rows]))
        reloaded = features(peft, pixels) @ prepared.heads["t0"].weight.T + prepared.heads["t0"].bias
    assert torch.allclose(reloaded, live, atol=1e-4, rtol=1e-4)


def test_tune_on_images_through_the_installed_script(images, tmp_path):
    done = run("tune", images / "tune.yaml", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert {"adapter_config.json", "adapter_model.safetensors", "coefficients.safetensors", "tune_report.json"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "heads" / "t0.safetensors").read_bytes() == (images / "m0" / "head.safetensors").read_bytes()
    report = json.loads((out / "tune_report.json").read_text())
    assert report["result"]["steps"] == 4


def test_tune_image_labels_outside_the_head_are_one_line(images, tmp_path):
    bad = tmp_path / "pngs"
    bad.mkdir()
    Image.fromarray(fashion_mnist("test", limit=1).images[0].numpy(), mode="L").save(bad / "x.png")
    (bad / "labels.csv").write_text("file,label\nx.png,zebra\n")
    config = yaml.safe_load((images / "tune.yaml").read_text())
    config["modules"] = [{"path": str(images / "m0"), "data": str(bad)}, {"path": str(images / "m1"), "data": str(images / "pngs1")}]
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(config))
    done = run("tune", tmp_path / "tune.yaml", "--out", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "'zebra' is not a class" in done.stderr and not (tmp_path / "out").exists()


def test_bench_vision_quick_through_the_installed_script(tmp_path):
    """Two real tasks (and the footwear concepts), conv LoRAs trained for 10 steps at 32 px: every part writes its results;
    the oracle router equals each adapter alone (the harness's own check), and PEFT's Arrow
    refusal of conv LoRAs is recorded, not hidden."""
    out = tmp_path / "bench"
    done = run("bench", "vision", "--quick", "--methods", "task_arithmetic,tsv,regmean", "--tuned", "none",
               "--cache-dir", tmp_path / "cache", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    merge = json.loads((out / "merge" / "results.json").read_text())
    assert merge["config"]["suite"] == "vision" and merge["config"]["base_model"] == "efficientnet-lite0"
    assert set(merge["methods"]) == {"task_arithmetic", "tsv", "regmean(n=16)", "regmean(n=64)"}
    assert (out / "merge" / "results.png").stat().st_size > 0
    compose = json.loads((out / "compose" / "results.json").read_text())
    routers = compose["routers"]
    for task, acc in compose["individual"].items():
        assert abs(routers["oracle"]["per_task"][task] - acc) < 1e-6
    assert "Linear-like" in routers["peft_arrow"]["unsupported"]
    assert len(compose["continual"]["runs"]["opcm"]) == 2
    concepts = json.loads((out / "concepts" / "results.json").read_text())
    assert concepts["chosen"] in concepts["entries"] and {"frozen (floor)", "concept heads (0 labels)"} <= set(concepts["entries"])
    assert all(0 <= e["acc"] <= 1 for e in concepts["entries"].values()) and (out / "concepts" / "results.md").is_file()
    again = run("bench", "vision", "--quick", "--parts", "routing", "--cache-dir", tmp_path / "cache", "--out", out)
    assert again.returncode == 2 and "--force" in again.stderr
