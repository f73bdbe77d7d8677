"""The Ray executor (``eigenmix merge --executor ray``) through the installed script: a local
Ray instance (2 CPUs), workers reading their layers from the input files; the output is
bit-identical to the local executor's for a spectral and an element-wise method, a failing
worker fails the merge cleanly, a worker killed mid-merge (SIGKILL) leaves nothing at
``--out``, and without Ray the command says how to install it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from common import eigenmix_script, run_cli
from test_cli_smoke import ENV, eigenmix, ok
from test_full_model_stream import fine_tunes, tiny_bert


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    base = tiny_bert(root / "base")
    return root, fine_tunes(root, base, k=2)


def config(root, folders, method, params, **extra):
    path = root / f"{method}-{len(extra)}.yaml"
    body = {"method": method, "base_model": str(root / "base"), "parameters": params, "modules": [{"path": str(f)} for f in folders],
            "output": {"kind": "full"}, **extra}  # fmt: skip
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize(("method", "params"), [("tsv", {}), ("ties", {"density": 0.5})])
def test_ray_output_is_bit_identical_to_local(finetuned, tmp_path, method, params):
    root, folders = finetuned
    cfg = config(root, folders, method, params, executor={"kind": "ray", "workers": 2})
    ok(eigenmix("merge", cfg, "--out", tmp_path / "local", "--threads", "1", "--executor", "local"))
    ok(eigenmix("merge", cfg, "--out", tmp_path / "ray", "--threads", "1"))
    local, ray = load_file(str(tmp_path / "local" / "model.safetensors")), load_file(str(tmp_path / "ray" / "model.safetensors"))
    assert local.keys() == ray.keys() and all(torch.equal(local[k], ray[k]) for k in local)
    report = json.loads((tmp_path / "ray" / "merge_report.json").read_text())
    assert report["config"]["executor"]["kind"] == "ray" and len(report["layers"]) == 37


def test_a_failing_worker_fails_the_merge_and_leaves_nothing(finetuned, tmp_path):
    root, folders = finetuned
    bad = tmp_path / "bad"
    bad.mkdir()
    tensors = load_file(str(folders[1] / "model.safetensors"))
    tensors["encoder.layer.1.output.dense.weight"][0, 0] = float("nan")  # read by the worker that merges this layer
    save_file(tensors, str(bad / "model.safetensors"))
    cfg = config(root, [folders[0], bad], "ties", {"density": 0.5}, executor={"kind": "ray"})
    done = eigenmix("merge", cfg, "--out", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "encoder.layer.1.output.dense.weight" in done.stderr and "NaN" in done.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def running_tasks(name: str) -> list[int]:
    """The processes of Ray workers running task ``name`` now (Ray titles them ``ray::NAME``)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(f"ray::{name}".encode()):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_a_worker_killed_mid_merge_leaves_nothing(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {f"blocks.{i}.weight": torch.randn(640, 640, generator=g) for i in range(40)}  # exact SVDs: seconds of work
    save_file(base, str(tmp_path / "base.safetensors"))
    for k in range(2):
        save_file({n: w + 0.01 * torch.randn(w.shape, generator=g) for n, w in base.items()}, str(tmp_path / f"ft{k}.safetensors"))
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump({"method": "tsv", "base_model": str(tmp_path / "base.safetensors"), "output": {"kind": "full"},
                                   "modules": [{"path": str(tmp_path / f"ft{k}.safetensors")} for k in range(2)],
                                   "executor": {"kind": "ray", "workers": 2}}))  # fmt: skip
    out = tmp_path / "out"
    proc = subprocess.Popen([str(eigenmix_script()), "merge", str(cfg), "--out", str(out), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    victims: list[int] = []
    deadline = time.monotonic() + 240
    while not victims and proc.poll() is None and time.monotonic() < deadline:
        victims = running_tasks("merge_remote")
        time.sleep(0.02)
    assert victims, "no Ray worker was seen merging a layer"
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "a Ray worker died mid-merge" in err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_without_ray_the_command_says_how_to_install_it(finetuned, tmp_path, monkeypatch, capsys):
    root, folders = finetuned
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where the extra is not installed
    cfg = config(root, folders, "ties", {"density": 0.5})
    assert run_cli(monkeypatch, "merge", cfg, "--out", tmp_path / "out", "--executor", "ray") == 2
    err = capsys.readouterr().err
    assert 'pip install -c constraints.txt -e ".[ray]"' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
