"""``eigenmix library`` and ``eigenmix route`` through the installed script, each in a fresh
process, on real all-MiniLM-L6-v2 adapters: the routes are those of the in-process routed
model, add/remove leave the other modules' files byte-identical, and every bad input is one
line, exit code 2, with the library on disk exactly as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from common import fails_in_process, raw_adapter
from eigenmix.train import MINILM_ID
from test_cli_smoke import eigenmix, ok


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def rows_file(path: Path, data: Path, task: str, n: int) -> Path:
    lines = (data / task / "test.jsonl").read_text().splitlines()[:n]
    path.write_text(
        "".join(
            json.dumps(
                {"text": json.loads(x)["text"], **({"text_pair": json.loads(x)["text_pair"]} if "text_pair" in json.loads(x) else {})}
            )
            + "\n"
            for x in lines
        )
    )
    return path


@pytest.fixture(scope="module")
def built(minilm_adapters, tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    a, data = minilm_adapters / "adapters", minilm_adapters / "data"
    trec, cola = rows_file(root / "trec.jsonl", data, "trec", 6), rows_file(root / "cola.jsonl", data, "cola", 6)
    out = ok(
        eigenmix("library", "build", a / "trec", a / "cola", "--rows", f"trec={trec}", "--rows", f"cola={cola}", "--out", root / "lib")
    )
    assert "2 modules" in out
    mixed = root / "mixed.jsonl"
    mixed.write_text(trec.read_text() + cola.read_text())
    return root


def test_list_shows_modules_heads_and_statistics(built):
    out = " ".join(ok(eigenmix("library", "list", built / "lib")).split())
    assert "2 modules of sentence-transformers/all-MiniLM-L6-v2" in out
    assert "│ trec │ 36 │ 8 │ 0, 1, 2, 3, 4, 5 │ yes │" in out and "│ cola │ 36 │ 8 │ 0, 1 │ yes │" in out  # small data: no label names
    inspected = ok(eigenmix("inspect", built / "lib", "--json", built / "inspect.json"))
    assert "module trec" in inspected and "module cola" in inspected
    assert set(json.loads((built / "inspect.json").read_text())["modules"]) == {"trec", "cola"}


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--router", "learned"],
        ["--calibration", "stats", "--scope", "layer", "--top-k", "1"],
        ["--calibration", "stream", "--level", "token"],
    ],
)  # the other routers and scopes: in process, tests/test_compose.py
def test_route_writes_one_row_per_input_with_weights_and_predictions(built, args, tmp_path):
    ok(eigenmix("route", built / "lib", "--inputs", built / "mixed.jsonl", "--out", tmp_path / "r", *args))
    rows = [json.loads(x) for x in (tmp_path / "r" / "routes.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 13))
    labels = {"trec": {"0", "1", "2", "3", "4", "5"}, "cola": {"0", "1"}}
    for r in rows:
        assert sum(r["weights"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["module"] == max(r["weights"], key=r["weights"].get)
        assert str(r["prediction"]) in labels[r["module"]] and 0 < r["probability"] <= 1
    report = json.loads((tmp_path / "r" / "route_report.json").read_text())
    assert report["rows"] == 12 and sum(report["rows_per_module"].values()) == 12


def test_route_equals_the_in_process_routed_model(built, tmp_path):
    """The CLI's weights are those of RoutedModel with ArrowRouter on the same rows."""
    from eigenmix.compose import RoutedModel, load_library
    from eigenmix.compose.routers import ArrowRouter
    from eigenmix.train.encoder import load_encoder

    ok(
        eigenmix(
            "route", built / "lib", "--inputs", built / "mixed.jsonl", "--out", tmp_path / "r", "--router", "arrow", "--batch-size", "1"
        )
    )
    got = [json.loads(x) for x in (tmp_path / "r" / "routes.jsonl").read_text().splitlines()]
    library = load_library(built / "lib")
    encoder, tokenizer = load_encoder(MINILM_ID)
    model = RoutedModel(encoder.eval(), library, ArrowRouter())
    for line, row in zip(got, (json.loads(x) for x in (built / "mixed.jsonl").read_text().splitlines()), strict=True):
        with torch.no_grad():
            model(
                **tokenizer(
                    [row["text"]], [row["text_pair"]] if "text_pair" in row else None, truncation=True, max_length=128, return_tensors="pt"
                )
            )
        expected = model.routing()[0]
        assert [line["weights"][n] for n in library.names] == pytest.approx(expected.tolist(), abs=1e-5)


def test_add_and_remove_touch_only_that_module(built, minilm_adapters, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib)
    before = snapshot(lib)
    ok(eigenmix("library", "add", lib, f"trec2={minilm_adapters / 'adapters' / 'trec'}"))
    after = snapshot(lib)
    assert {k: v for k, v in after.items() if k in before and k != "library.json"} == {
        k: v for k, v in before.items() if k != "library.json"
    }
    assert "modules/trec2.safetensors" in after
    assert "3 modules" in ok(eigenmix("library", "list", lib))
    ok(eigenmix("library", "remove", lib, "trec2"))
    assert snapshot(lib) == before  # the same index, byte for byte, and the same module files


def bad(args, message, lib):
    before = snapshot(lib)
    done = eigenmix(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert snapshot(lib) == before


def bad_in_process(monkeypatch, capsys, args, message, lib):
    """``bad`` without a fresh process (``fails_in_process``: one line, exit code 2)."""
    before = snapshot(lib)
    assert message in fails_in_process(monkeypatch, capsys, *args)
    assert snapshot(lib) == before


def test_bad_inputs_are_one_line_and_leave_the_library_as_it_was(built, minilm_adapters, tmp_path, monkeypatch, capsys):
    """Two bad inputs through the installed script in a fresh process (``library add``,
    ``route``); the others in-process."""
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib)
    other_base = raw_adapter(tmp_path / "other_base", {"encoder.layer.0.attention.self.query": (384, 384)}, base="other/model")
    other_shape = raw_adapter(tmp_path / "other_shape", {"encoder.layer.0.attention.self.query": (16, 384)}, base=MINILM_ID)
    bad(["library", "add", lib, other_base], "base model", lib)
    bad_in_process(monkeypatch, capsys, ["library", "add", lib, other_shape], "shape", lib)
    trec = minilm_adapters / "adapters" / "trec"
    bad_in_process(monkeypatch, capsys, ["library", "add", lib, trec], "already has a module named 'trec'", lib)
    bad_in_process(monkeypatch, capsys, ["library", "add", lib, f"bad/name={trec}"], "", lib)
    bad_in_process(monkeypatch, capsys, ["library", "remove", lib, "nothere"], "has no module 'nothere'", lib)
    bad(["route", lib, "--inputs", built / "mixed.jsonl", "--out", tmp_path / "r", "--router", "nope"], "--router 'nope'", lib)
    bad_in_process(monkeypatch, capsys, ["route", lib, "--inputs", lib / "library.json", "--out", tmp_path / "r"], "", lib)
    bad_in_process(monkeypatch, capsys, ["route", lib, "--inputs", built / "mixed.jsonl", "--out", lib / "r"], "inside an input", lib)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("damage", ["truncate", "index", "missing"])
def test_a_corrupt_or_truncated_library_is_one_line(built, tmp_path, damage, monkeypatch, capsys):
    """``route`` through the installed script in a fresh process; ``library list`` and
    ``library remove`` in-process."""
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib)
    module = lib / "modules" / "cola.safetensors"
    if damage == "truncate":
        module.write_bytes(module.read_bytes()[: module.stat().st_size // 2])
    elif damage == "index":
        (lib / "library.json").write_text("{not json")
    else:
        module.unlink()
    for args in (["library", "list", lib], ["library", "remove", lib, "trec"]):
        bad_in_process(monkeypatch, capsys, args, str(lib), lib)
    bad(["route", lib, "--inputs", built / "mixed.jsonl", "--out", tmp_path / "r"], str(lib), lib)


def test_learned_and_stats_need_the_modules_rows(minilm_adapters, built, tmp_path):
    a = minilm_adapters / "adapters"
    ok(eigenmix("library", "build", a / "trec", a / "cola", "--out", tmp_path / "lib"))
    bad(
        ["route", tmp_path / "lib", "--inputs", built / "mixed.jsonl", "--out", tmp_path / "r", "--router", "learned"],
        "--rows",
        tmp_path / "lib",
    )
    bad(
        ["route", tmp_path / "lib", "--inputs", built / "mixed.jsonl", "--out", tmp_path / "r", "--calibration", "stats"],
        "--rows",
        tmp_path / "lib",
    )
