"""Mistakes and faults found by trying eigenmix as a new user (each failed before its fix):
every one is a single line, found before any work, and leaves the inputs alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from common import eigenmix_script, raw_adapter, run_cli

SHAPES = {"enc.q": (10, 12), "enc.v": (10, 12)}


@pytest.fixture
def two(tmp_path):
    for i in range(2):
        raw_adapter(tmp_path / f"a{i}", SHAPES, seed=i)
    return tmp_path


def config(folder, **values):
    path = folder / "merge.yaml"
    path.write_text(yaml.safe_dump({"method": "linear", "modules": [{"path": "a0"}, {"path": "a1"}], **values}))
    return path


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    return " ".join(err.split())


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", ["a0/report.json", "a0/adapter_config.json", "notes.txt"])
def test_inspect_json_never_writes_into_an_input_or_over_a_file_it_did_not_write(two, monkeypatch, capsys, target):
    (two / "notes.txt").write_text("precious")
    before = snapshot(two)
    assert run_cli(monkeypatch, "inspect", two / "a0", "--json", two / target, "--force") == 2
    err = one_line(capsys)
    assert "lies inside an input" in err or "not an earlier output of this command" in err, err
    assert snapshot(two) == before


def test_inspect_json_force_replaces_its_own_report_only(two, monkeypatch, capsys):
    assert run_cli(monkeypatch, "inspect", two / "a0", "--json", two / "r.json") == 0
    assert json.loads((two / "r.json").read_text())["format"] == "eigenmix-inspect"
    assert run_cli(monkeypatch, "inspect", two / "a1", "--json", two / "r.json", "--force") == 0
    assert json.loads((two / "r.json").read_text())["adapter"].endswith("a1")


def test_inspect_json_refuses_a_device(two, monkeypatch, capsys):
    assert run_cli(monkeypatch, "inspect", two / "a0", "--json", "/dev/null", "--force") == 2
    assert "not a regular file" in one_line(capsys)
    assert not os.path.isfile("/dev/null")


def test_a_module_name_cannot_leave_the_output(two, monkeypatch, capsys):
    cfg = config(two, modules=[{"path": "a0", "name": "x"}, {"path": "a1", "name": "../../evil"}])
    assert run_cli(monkeypatch, "merge", cfg, "--out", two / "out") == 2
    assert "must be a plain file name" in one_line(capsys)
    assert not (two / "out").exists() and not list(two.parent.glob("evil*"))


def test_scale_zero_is_refused_and_a_layer_merged_to_zero_is_still_loadable(two, monkeypatch, capsys):
    assert run_cli(monkeypatch, "merge", config(two, parameters={"scale": 0}), "--out", two / "out") == 2
    assert "scale 0" in one_line(capsys)
    cfg = config(two, modules=[{"path": "a0", "weight": 1e-300}, {"path": "a1", "weight": 1e-300}])
    assert run_cli(monkeypatch, "merge", cfg, "--out", two / "out") == 0
    report = json.loads((two / "out" / "merge_report.json").read_text())
    assert "merged to zero" in report["notes"][0] and {r["exact_rank"] for r in report["layers"]} == {0}
    assert run_cli(monkeypatch, "inspect", two / "out") == 0  # r = 1, all zeros: eigenmix and PEFT read it


def test_a_corrupt_head_beside_an_adapter_is_refused_before_merging(two, monkeypatch, capsys):
    (two / "a0" / "head.safetensors").write_bytes(os.urandom(100))
    (two / "a0" / "head.json").write_text("{}")
    assert run_cli(monkeypatch, "merge", config(two), "--out", two / "out", "--dry-run") == 2
    assert "head.safetensors" in one_line(capsys)


def test_the_base_given_as_a_fine_tune_is_one_line(tmp_path, monkeypatch, capsys):
    """Fine-tunes are read lazily, so an unchanged copy merges as zero task vectors (as in
    mergekit); the base itself given as a fine-tune is refused before any work."""
    save_file({"w": torch.ones(3, 4)}, str(tmp_path / "base.safetensors"))
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump({"method": "tsv", "modules": [{"path": "base.safetensors"}], "base_model": "base.safetensors"}))
    assert run_cli(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 2
    assert "is the base model itself" in one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_missing_paths_are_reported_together_with_the_other_problems(two, monkeypatch, capsys):
    cfg = config(two, modules=[{"path": "nope1"}, {"path": "nope2"}], parameters={"fractoin": 1})
    assert run_cli(monkeypatch, "merge", cfg, "--out", two / "out") == 2
    err = one_line(capsys)
    assert "3 problems" in err and "nope1 does not exist" in err and "nope2 does not exist" in err and "fractoin" in err


def test_a_key_given_twice_is_refused_with_its_line(two, monkeypatch, capsys):
    cfg = two / "merge.yaml"
    cfg.write_text("method: tsv\nmodules: [{path: a0}, {path: a1}]\nmethod: ties\n")
    assert run_cli(monkeypatch, "merge", cfg, "--out", two / "out") == 2
    assert f"{cfg}:3:1: not valid YAML: key 'method' is given twice" in one_line(capsys)


@pytest.mark.parametrize(
    "args",
    [
        ["merge", "merge.yaml"],
        ["merge", "merge.yaml", "--out", "o", "--frce"],
        ["mrege"],
        ["inspect", "--top", "0", "a0"],
        ["demo", "--tasks", "sst2"],
    ],
)
def test_command_line_mistakes_are_one_line(two, monkeypatch, capsys, args):
    monkeypatch.chdir(two)
    config(two)
    assert run_cli(monkeypatch, *args) == 2
    assert "--help" in one_line(capsys)


def test_an_output_below_a_file_is_refused_before_work(two, monkeypatch, capsys):
    (two / "afile.txt").write_text("x")
    assert run_cli(monkeypatch, "merge", config(two), "--out", two / "afile.txt" / "x", "--dry-run") == 2
    assert "is not a folder" in one_line(capsys)
    assert run_cli(monkeypatch, "merge", config(two), "--out", "") == 2  # the command line's "" is "."
    assert "working folder" in one_line(capsys)


def test_a_failed_merge_removes_the_parent_folders_it_made(two, monkeypatch, capsys):
    cfg = config(two, modules=[{"path": "a0", "weight": 1e300}, {"path": "a1"}])
    assert run_cli(monkeypatch, "merge", cfg, "--out", two / "new" / "a" / "b") == 2
    assert not (two / "new").exists()


def test_home_is_expanded_in_config_paths(two, monkeypatch):
    monkeypatch.setenv("HOME", str(two))
    cfg = config(two, modules=[{"path": "~/a0"}, {"path": "~/a1"}])
    assert run_cli(monkeypatch, "merge", cfg, "--out", two / "out") == 0


def test_every_output_file_gets_the_umask_mode(two, monkeypatch):
    """safetensors writes its files 0600; outputs get what a plain open gives (0644 under 022)."""
    from eigenmix.compose import Library, save_library
    from eigenmix.io import read_lora_adapter, write_lora_adapter
    from eigenmix.io.atomic import destination

    old = os.umask(0o022)
    try:
        save_file({k: v.contiguous() for k, v in {"enc.q.weight": torch.zeros(10, 12), "enc.v.weight": torch.zeros(10, 12)}.items()},
                  str(two / "base.safetensors"))  # fmt: skip
        full = config(two, base_model="base.safetensors", output={"kind": "full"})
        assert run_cli(monkeypatch, "merge", full, "--out", two / "full") == 0
        write_lora_adapter(read_lora_adapter(two / "a0"), two / "copy")
        library = Library()
        library.add(read_lora_adapter(two / "a0"))
        save_library(library, destination(two / "lib", marker="library.json"))
    finally:
        os.umask(old)
    files = [two / "full" / "model.safetensors", two / "copy" / "adapter_model.safetensors", two / "lib" / "modules" / "a0.safetensors"]
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in files), [oct(f.stat().st_mode) for f in files]
    key = "base_model.model.enc.q.lora_A.weight"
    assert torch.equal(load_file(str(files[1]))[key], load_file(str(two / "a0" / "adapter_model.safetensors"))[key])


def test_bench_refuses_a_file_as_cache_and_names_given_twice(tmp_path, monkeypatch, capsys):
    (tmp_path / "cache").write_text("x")
    assert run_cli(monkeypatch, "bench", "merge", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "o") == 2
    assert "is not a folder" in one_line(capsys)
    assert run_cli(monkeypatch, "bench", "merge", "--methods", "ties,ties", "--out", tmp_path / "o") == 2
    assert "listed twice" in one_line(capsys)
    assert run_cli(monkeypatch, "demo", "--tasks", "sst2,sst2", "--out", tmp_path / "d") == 2
    assert "two different tasks" in one_line(capsys)


def test_ctrl_c_during_start_up_is_one_line():
    """The handlers are set before torch is imported: a signal while it loads is one line."""

    def default_sigint() -> None:  # a background test runner may start children with SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    job = subprocess.Popen(
        [str(eigenmix_script()), "methods"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    time.sleep(0.8)  # past the interpreter's start, inside the imports of torch (~2 s)
    job.send_signal(signal.SIGINT)
    code = job.wait(timeout=60)
    err = job.stderr.read().strip()  # type: ignore[union-attr]
    assert code == 130 and err == "interrupted (SIGINT); nothing was written", (code, err)
