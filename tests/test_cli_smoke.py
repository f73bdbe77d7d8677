"""Every subcommand through the installed ``eigenmix`` script, each in a fresh process, as a
user runs it: its ``--help`` and one real run on tiny inputs. In-process CLI tests import
other modules first and cannot see an import cycle (one hid a crash of ``eigenmix tune``);
these can. And every module of the package imports on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from common import eigenmix_script, raw_adapter, small_data

ENV = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1"}


def eigenmix(*args: object, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(eigenmix_script()), *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


COMMANDS = [
    [], ["inspect"], ["overlap"], ["methods"], ["merge"], ["tune"], ["bench"], ["bench", "merge"], ["bench", "compose"], ["demo"],
    ["library"], ["library", "build"], ["library", "add"], ["library", "remove"], ["library", "list"], ["route"], ["explain"], ["train"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command):
    out = ok(eigenmix(*command, "--help"))
    assert "Usage" in out and "Traceback" not in out


def test_every_module_imports_on_its_own():
    """In a fresh interpreter, each module of the package imported with none of the
    package's other modules loaded before it (third-party ones stay, for speed): an import
    cycle or a dependency on import order fails here."""
    script = """
import importlib, pkgutil, sys
import eigenmix
names = ["eigenmix"] + sorted(m.name for m in pkgutil.walk_packages(eigenmix.__path__, "eigenmix.") if not m.name.endswith("__main__"))
bad = []
for name in names:
    for key in [k for k in sys.modules if k == "eigenmix" or k.startswith("eigenmix.")]:
        del sys.modules[key]
    try:
        importlib.import_module(name)
    except Exception as err:
        bad.append(f"{name}: {type(err).__name__}: {err}")
print(len(names))
print("\\n".join(bad))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and int(lines[0]) > 50, done.stderr
    assert lines[1:] == [], "\n".join(lines[1:])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    for i in range(2):
        raw_adapter(root / f"a{i}", {"enc.q": (10, 12), "enc.v": (10, 12)}, seed=i)
    return root


def test_version_inspect_overlap_methods(tiny):
    assert ok(eigenmix("--version")).startswith("eigenmix ")
    assert "2 layers, total rank 8" in " ".join(ok(eigenmix("inspect", tiny / "a0", "--json", tiny / "r.json")).split())
    assert json.loads((tiny / "r.json").read_text())["layers"]
    assert "2 shared layers" in ok(eigenmix("overlap", tiny / "a0", tiny / "a1"))
    assert "knots" in ok(eigenmix("methods"))


def test_merge(tiny):
    cfg = tiny / "merge.yaml"
    cfg.write_text(yaml.safe_dump({"method": "ties", "parameters": {"trim": "global"}, "modules": [{"path": "a0"}, {"path": "a1"}]}))
    assert "dry run" in ok(eigenmix("merge", cfg, "--out", tiny / "merged", "--dry-run"))
    assert "2 layers in" in ok(eigenmix("merge", cfg, "--out", tiny / "merged"))
    assert (tiny / "merged" / "adapter_model.safetensors").is_file()
    done = eigenmix("merge", cfg, "--out", tiny / "merged")
    assert done.returncode == 2 and done.stderr.strip().startswith("error:") and len(done.stderr.strip().splitlines()) == 1


def test_tune(minilm_adapters, tmp_path):
    config = {
        "modules": [{"path": str(minilm_adapters / "adapters" / t)} for t in ("trec", "cola")],
        "data_dir": str(minilm_adapters / "data"),
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "tune": {"rows": 8, "settings": {"steps": 2, "eval_every": 1}},
        "val_rows": 8,
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(config))
    out = ok(eigenmix("tune", tmp_path / "tune.yaml", "--out", tmp_path / "tuned"))
    assert "coefficients" in out and (tmp_path / "tuned" / "tune_report.json").is_file()
    assert "learned coefficients" in ok(eigenmix("inspect", tmp_path / "tuned"))


def test_bench_merge(tmp_path):
    data = small_data(tmp_path / "data", train=24, test=8)
    args = ["--data-dir", data, "--methods", "task_arithmetic", "--steps", "1", "--val-rows", "4", "--cache-dir", tmp_path / "cache"]
    ok(eigenmix("bench", "merge", *args, "--out", tmp_path / "bench"))
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert list(results["methods"]) == ["task_arithmetic"] and results["tasks"] == ["cola", "trec"]


def test_bench_compose(tmp_path):
    """Every part on two tiny tasks: the routers beside a merge run of the same settings, the
    cost at K = 2 and 4, the continual orders."""
    data = small_data(tmp_path / "data", train=24, test=8)
    common = ["--data-dir", data, "--steps", "1", "--val-rows", "4", "--cache-dir", tmp_path / "cache"]
    ok(eigenmix("bench", "merge", *common, "--quick", "--methods", "task_arithmetic", "--out", tmp_path / "merge"))
    out = ok(eigenmix("bench", "compose", *common, "--quick", "--static", tmp_path / "merge", "--out", tmp_path / "compose"))
    results = json.loads((tmp_path / "compose" / "results.json").read_text())
    assert set(results["routers"]) == {
        "oracle",
        "uniform",
        "arrow",
        "peft_arrow",
        "spectral",
        "spectral+stats(n=16)",
        "spectral+stream",
        "learned(n=64)",
    }
    assert results["routers"]["oracle"]["per_task"] == pytest.approx(results["individual"], abs=1e-9)  # the harness's own check
    assert results["routers"]["arrow"]["per_task"] == pytest.approx(results["routers"]["peft_arrow"]["per_task"], abs=0.05)
    assert list(results["cost"]["per_k"]) == ["2", "4"] and len(results["continual"]["runs"]["opcm"]) == 3
    assert "static: task_arithmetic" in out and (tmp_path / "compose" / "results.md").is_file()
    done = eigenmix("bench", "compose", *common, "--parts", "routing,nope", "--out", tmp_path / "x")
    assert done.returncode == 2 and "unknown part 'nope'" in done.stderr


def test_demo(tmp_path):
    out = ok(eigenmix("demo", "--steps", "1", "--eval-rows", "8", "--out", tmp_path / "demo"))
    assert "subspace overlap" in out and "demo done" in out
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["ag_news", "demo.json", "sst2"]
    done = eigenmix("demo", "--steps", "1", "--out", tmp_path / "demo")
    assert done.returncode == 2 and "already exists" in done.stderr
