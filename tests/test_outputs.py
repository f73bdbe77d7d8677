"""Outputs appear whole or not at all, never replace what the command did not create, and
every failure of the operating system is one line: destinations (inputs, markers, the
working folder), no-replace renames (two jobs on one --out), permissions under the umask,
a full disk, unwritable and read-only targets, and Ctrl-C / SIGTERM / SIGHUP in a real
process."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from common import eigenmix_script, raw_adapter, run_cli
from eigenmix.errors import InvalidInputError
from eigenmix.io.atomic import OutputError, atomic_dir, atomic_file, destination, rename_noreplace
from eigenmix.merging.config import load_config
from eigenmix.merging.run import run_merge

SHAPES = {"enc.q": (10, 12), "enc.v": (10, 12)}


@pytest.fixture
def setup(tmp_path):
    """Two tiny adapters and a merge config beside them."""
    inputs = tmp_path / "inputs"
    for i in range(2):
        raw_adapter(inputs / f"a{i}", SHAPES, seed=i)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump({"method": "linear", "modules": [{"path": "inputs/a0"}, {"path": "inputs/a1"}]}))
    return tmp_path, cfg


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


def no_leftovers(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


# --- destinations ---------------------------------------------------------------------


@pytest.mark.parametrize("target", ["inputs/a0", "inputs", "."])
def test_an_output_that_is_or_holds_an_input_is_refused_even_with_force(setup, monkeypatch, capsys, target):
    root, cfg = setup
    before = snapshot(root)
    monkeypatch.chdir(root if target != "." else root / "inputs")
    out = root / target if target != "." else Path(".")
    assert run_cli(monkeypatch, "merge", cfg, "--out", out, "--force") == 2
    err = one_line(capsys)
    assert "input" in err or "working folder" in err
    assert snapshot(root) == before


def test_an_output_inside_an_input_folder_is_refused(setup, monkeypatch, capsys):
    root, cfg = setup
    assert run_cli(monkeypatch, "merge", cfg, "--out", root / "inputs" / "a0" / "merged") == 2
    assert "lies inside an input" in one_line(capsys)
    assert not (root / "inputs" / "a0" / "merged").exists()


def test_force_replaces_only_an_earlier_output_of_the_same_command(setup, monkeypatch, capsys):
    root, cfg = setup
    notes = root / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    assert run_cli(monkeypatch, "merge", cfg, "--out", notes, "--force") == 2
    assert "not an earlier output of this command" in one_line(capsys)
    assert (notes / "mine.txt").read_text() == "keep me"
    assert run_cli(monkeypatch, "merge", cfg, "--out", root / "out") == 0
    first = snapshot(root / "out")
    assert run_cli(monkeypatch, "merge", cfg, "--out", root / "out") == 2  # exists, no --force
    assert run_cli(monkeypatch, "merge", cfg, "--out", root / "out", "--force") == 0  # its own output: replaced
    assert set(snapshot(root / "out")) == set(first) and no_leftovers(root)


def test_a_folder_that_appears_meanwhile_is_not_replaced(setup):
    """The existence check and the final rename are not one step: the rename itself refuses."""
    root, cfg = setup
    config = load_config(cfg)
    dest = destination(root / "out", inputs=config.inputs(), marker="merge_report.json")

    def someone_else(_):
        if not (root / "out").exists():
            (root / "out").mkdir()
            (root / "out" / "theirs.txt").write_text("theirs")

    with pytest.raises(OutputError, match="appeared while this command ran"):
        run_merge(config, dest, on_layer=someone_else)
    assert snapshot(root / "out") == {"theirs.txt": b"theirs"} and no_leftovers(root)


def test_rename_noreplace_refuses_even_an_empty_folder(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "src", tmp_path / "dst")
    rename_noreplace(tmp_path / "src", tmp_path / "new")
    assert (tmp_path / "new").is_dir() and not (tmp_path / "src").exists()


def test_two_merges_on_one_out_do_not_overwrite_each_other(tmp_path):
    """Started together in two processes: one writes --out, the other says so and writes nothing."""
    inputs = tmp_path / "inputs"
    for i in range(2):
        raw_adapter(inputs / f"a{i}", {f"enc.l{j}": (384, 384) for j in range(24)}, r=16, seed=i)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump({"method": "ties", "modules": [{"path": "inputs/a0"}, {"path": "inputs/a1"}]}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen([str(eigenmix_script()), "merge", str(cfg), "--out", str(tmp_path / "out")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]  # fmt: skip
    results = sorted((job.wait(timeout=300), job.stderr.read()) for job in jobs)  # type: ignore[union-attr]
    assert [code for code, _ in results] == [0, 2], results
    assert "already exists" in results[1][1] or "appeared while this command ran" in results[1][1]
    assert (tmp_path / "out" / "merge_report.json").is_file() and no_leftovers(tmp_path)


def test_output_folders_get_the_permissions_of_a_plain_mkdir(setup, monkeypatch):
    root, cfg = setup
    for mask, mode in ((0o022, 0o755), (0o027, 0o750)):
        old = os.umask(mask)
        try:
            assert run_cli(monkeypatch, "merge", cfg, "--out", root / f"out{mask:o}") == 0
        finally:
            os.umask(old)
        assert (root / f"out{mask:o}").stat().st_mode & 0o777 == mode


# --- operating-system failures --------------------------------------------------------


def test_a_full_disk_mid_merge_is_one_line_and_leaves_nothing(setup, monkeypatch, capsys):
    """ENOSPC from the writer (injected at the second layer, as a full disk raises it)."""
    from eigenmix.io import stream_writer

    root, cfg = setup
    real_add = stream_writer.StreamWriter.add
    calls = []

    def add(self, name, tensor):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real_add(self, name, tensor)

    monkeypatch.setattr(stream_writer.StreamWriter, "add", add)
    assert run_cli(monkeypatch, "merge", cfg, "--out", root / "out") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "adapter_model.safetensors" in err
    assert not (root / "out").exists() and no_leftovers(root)


def small_tmpfs(folder: Path, *options: str) -> bool:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=64k", *options]), "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def test_a_really_full_disk_is_one_line_and_leaves_nothing(setup, capsys):
    """A 64 kB tmpfs as the output's file system (needs mount privileges; skipped, saying so, without)."""
    root, cfg = setup
    for i in range(2):  # adapters too large for 64 kB
        raw_adapter(root / "inputs" / f"big{i}", {"enc.q": (300, 300), "enc.v": (300, 300)}, r=16, seed=i)
    cfg.write_text(yaml.safe_dump({"method": "linear", "modules": [{"path": "inputs/big0"}, {"path": "inputs/big1"}]}))
    disk = root / "disk"
    if not small_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (no privileges): the injected-ENOSPC test covers the path")
    try:
        done = subprocess.run([str(eigenmix_script()), "merge", str(cfg), "--out", str(disk / "out")], capture_output=True, text=True)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "No space left on device" in done.stderr
        assert os.listdir(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("where", ["/sys/eigenmix-out", "/proc/no-such-process/out"])
def test_an_unwritable_target_is_one_line(setup, monkeypatch, capsys, where):
    _, cfg = setup
    code = run_cli(monkeypatch, "merge", cfg, "--out", where)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("error:") and "/" in err, err


def test_a_read_only_file_system_is_one_line(setup, capsys):
    root, cfg = setup
    disk = root / "ro"
    if not small_tmpfs(disk, "ro"):
        pytest.skip("cannot mount a read-only tmpfs here (no privileges); /sys covers unwritable targets")
    try:
        done = subprocess.run([str(eigenmix_script()), "merge", str(cfg), "--out", str(disk / "out")], capture_output=True, text=True)
        assert done.returncode == 1 and "Read-only file system" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("config", ["/dev/urandom", "/dev/null"])
def test_a_device_as_the_config_is_one_line_and_read_no_further(tmp_path, monkeypatch, capsys, config):
    """A character device is not a config: refused before reading (/dev/urandom never ends)."""
    assert run_cli(monkeypatch, "merge", config, "--out", tmp_path / "out", "--dry-run") == 2
    assert "not a regular file" in one_line(capsys)


def test_a_huge_config_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "big.yaml").write_text("# " + "x" * (2 << 20) + "\n")
    assert run_cli(monkeypatch, "merge", tmp_path / "big.yaml", "--out", tmp_path / "out") == 2
    assert "too large for a config" in one_line(capsys)


def test_a_binary_config_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00\xff\xfe\x00binary")
    assert run_cli(monkeypatch, "merge", tmp_path / "model.safetensors", "--out", tmp_path / "out") == 2
    assert "not a text file" in one_line(capsys)


# --- signals ----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_clean_up_and_say_one_line(tmp_path, sig):
    """A real process, signalled while it merges (its temporary folder exists): exit code
    128 + signal, one line, no temporary folder, no output."""
    inputs = tmp_path / "inputs"
    for i in range(2):
        raw_adapter(inputs / f"a{i}", {f"enc.l{j}": (512, 512) for j in range(80)}, r=16, seed=i)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump({"method": "ties", "modules": [{"path": "inputs/a0"}, {"path": "inputs/a1"}]}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([str(eigenmix_script()), "merge", str(cfg), "--out", str(tmp_path / "out")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(".out.tmp-" in p.name for p in tmp_path.iterdir()):
        assert job.poll() is None and time.monotonic() < deadline, "the merge ended before it could be signalled"
        time.sleep(0.05)
    time.sleep(0.3)
    job.send_signal(sig)
    code = job.wait(timeout=60)
    err = job.stderr.read().strip()  # type: ignore[union-attr]
    assert code == 128 + sig, err
    assert err.splitlines() == [f"interrupted ({signal.Signals(sig).name}); nothing was written"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "merge.yaml"]


# --- files ------------------------------------------------------------------------------


def test_inspect_json_into_a_folder_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    raw_adapter(tmp_path / "a", SHAPES)
    for folder in (tmp_path, Path("/tmp")):
        before = sorted(os.listdir(folder))
        assert run_cli(monkeypatch, "inspect", tmp_path / "a", "--json", folder) == 2
        assert "is a folder; give a file name" in one_line(capsys)
        assert sorted(os.listdir(folder)) == before
    assert not Path("/.tmp.tmp").exists()


def test_inspect_json_is_written_beside_its_target_and_replaced_only_with_force(tmp_path, monkeypatch, capsys):
    raw_adapter(tmp_path / "a", SHAPES)
    report = tmp_path / "reports" / "r.json"
    assert run_cli(monkeypatch, "inspect", tmp_path / "a", "--json", report) == 0
    assert json.loads(report.read_text())["layers"]
    assert run_cli(monkeypatch, "inspect", tmp_path / "a", "--json", report) == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli(monkeypatch, "inspect", tmp_path / "a", "--json", report, "--force") == 0
    assert os.listdir(tmp_path / "reports") == ["r.json"]


def test_atomic_file_and_dir_clean_up_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "f.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "half").write_text("half")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with pytest.raises(InvalidInputError, match="already exists"):
        destination(tmp_path)


def test_python_m_eigenmix_runs_the_console_script():
    done = subprocess.run([sys.executable, "-m", "eigenmix", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("eigenmix ")
