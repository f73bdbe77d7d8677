"""``eigenmix explain`` through the installed script, each in a fresh process, on real
all-MiniLM-L6-v2 adapters: a merged adapter (with the residual of a merge that is no
reweighting), a routed library and a single adapter; the report opened in headless
Chromium; every bad input one line, exit code 2, nothing written (two of them through the
script, the others in-process)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from common import fails_in_process, raw_adapter
from test_cli_smoke import eigenmix, ok


def probe(path: Path, data: Path, tasks=("trec", "cola"), n: int = 5) -> Path:
    with path.open("w") as fh:
        for task in tasks:
            for line in (data / task / "test.jsonl").read_text().splitlines()[:n]:
                fh.write(json.dumps({"text": json.loads(line)["text"], "task": task}) + "\n")
    return path


@pytest.fixture(scope="module")
def explained(minilm_adapters, tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    a = minilm_adapters / "adapters"
    (root / "merge.yaml").write_text(f"method: ties\nmodules:\n  - {{path: {a / 'trec'}}}\n  - {{path: {a / 'cola'}}}\n")
    ok(eigenmix("merge", root / "merge.yaml", "--out", root / "merged"))
    rows = probe(root / "probe.jsonl", minilm_adapters / "data")
    out = ok(eigenmix("explain", root / "merged", "--inputs", rows, "--out", root / "ex", "--top", "3"))
    assert "10 rows explained over 36 layers" in " ".join(out.split())
    return root


def test_a_merged_adapter_is_explained_with_shares_that_add_up(explained):
    doc = json.loads((explained / "ex" / "explain.json").read_text())
    assert doc["kind"] == "merged" and doc["parts"] == ["trec", "cola", "residual"] and doc["rows"] == 10
    assert len(doc["layers"]) == 36
    for shares in doc["layer_shares"].values():
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    for layer, matrix in doc["layer_cross"].items():  # own + cross = share, part by part
        for k, part in enumerate(doc["parts"]):
            assert sum(matrix[k]) == pytest.approx(doc["layer_shares"][layer][part], abs=1e-5)
            assert matrix[k][k] == pytest.approx(doc["layer_own"][layer][part], abs=1e-6)
    assert [r["line"] for r in doc["inputs"]] == list(range(1, 11))
    for r in doc["inputs"]:
        assert sum(r["shares"].values()) == pytest.approx(1.0, abs=1e-5) and r["top_part"] == max(r["shares"], key=r["shares"].get)
    assert set(doc["group_shares"]) == {"trec", "cola"}
    for part in ("trec", "cola"):
        top = doc["top_directions"][part]
        assert len(top) == 3 and all(d["part"] == part and d["top"] and d["top"][0]["token"] for d in top)
        assert [d["share"] for d in top] == sorted((d["share"] for d in top), reverse=True)
    tokens = doc["tokens"][0]
    assert len(tokens["tokens"]) == len(tokens["shares"]) and tokens["tokens"][0] == "[CLS]"
    page = (explained / "ex" / "report.html").read_text()
    assert page.count("<img") >= 8 and "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained


def test_a_routed_library_and_a_single_adapter(explained, minilm_adapters, tmp_path):
    a = minilm_adapters / "adapters"
    ok(eigenmix("library", "build", a / "trec", a / "cola", "--out", tmp_path / "lib"))
    ok(eigenmix("explain", tmp_path / "lib", "--inputs", explained / "probe.jsonl", "--out", tmp_path / "el", "--router", "uniform"))
    doc = json.loads((tmp_path / "el" / "explain.json").read_text())
    assert doc["kind"] == "library" and doc["router"] == "uniform" and doc["parts"] == ["trec", "cola"]
    ok(eigenmix("explain", a / "trec", "--inputs", explained / "probe.jsonl", "--out", tmp_path / "ea"))
    doc = json.loads((tmp_path / "ea" / "explain.json").read_text())
    assert doc["kind"] == "adapter" and doc["parts"] == ["trec"]
    assert all(s["trec"] == pytest.approx(1.0) for s in doc["layer_shares"].values())


def test_a_rows_tokens_do_not_depend_on_its_batch(tmp_path):
    """A single text batched with a sentence pair gets no extra [SEP] (no empty pair), so
    shares do not change with --batch-size."""
    from eigenmix.data.inputs import InputRow
    from eigenmix.harness.backbones import Backbone
    from eigenmix.inputs import TextInputs
    from eigenmix.train import load_encoder

    _, tokenizer = load_encoder()
    enc = Backbone("minilm", None, TextInputs(tokenizer, 64))
    rows = [InputRow(1, "a charming journey ."), InputRow(2, "one sentence .", "and its pair .")]
    together = {
        i: batch["input_ids"][j][batch["attention_mask"][j].bool()].tolist()
        for chunk, batch in enc.batches(rows, 2)
        for j, i in enumerate(chunk)
    }
    alone = {i: batch["input_ids"][0].tolist() for r in (0, 1) for chunk, batch in enc.batches([rows[r]], 1) for i in [r]}
    assert together == alone
    assert tokenizer.convert_ids_to_tokens(together[0]).count("[SEP]") == 1


def test_config_paths_are_recorded_absolute(tmp_path, monkeypatch):
    from eigenmix.merging.config import load_config

    (tmp_path / "cfg").mkdir()
    raw_adapter(tmp_path / "cfg" / "a", {"q": (4, 4)})
    (tmp_path / "cfg" / "m.yaml").write_text("method: linear\nmodules:\n  - {path: a}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(Path("cfg/m.yaml")).modules[0].path == tmp_path / "cfg" / "a"  # a report read from anywhere finds it


def chromium() -> str | None:
    return os.environ.get("EIGENMIX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_report_loads_in_a_real_browser_with_every_figure(explained):
    """Headless Chromium (Debian's, installed by `make test`): no console error, every figure
    decoded with a non-zero size on the page, a screenshot saved."""
    browser = chromium()
    if browser is None:
        pytest.fail("no Chromium: `make browser` installs Debian's chromium (apt-get); set EIGENMIX_CHROMIUM to use another")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = b.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto((explained / "ex" / "report.html").as_uri(), wait_until="load")
            figures = page.evaluate(
                "Array.from(document.images).map(i => ({w: i.naturalWidth, h: i.naturalHeight, done: i.complete,"
                " box: i.getBoundingClientRect().width * i.getBoundingClientRect().height}))"
            )
            headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
            page.screenshot(path=str(explained / "ex" / "screenshot.png"), full_page=True)
        finally:
            b.close()
    assert errors == []
    assert len(figures) >= 8 and all(f["done"] and f["w"] > 0 and f["h"] > 0 and f["box"] > 0 for f in figures), figures
    assert "Which part changes each layer" in headings and "Spectra" in headings
    assert (explained / "ex" / "screenshot.png").stat().st_size > 10_000


def fails(done) -> str:
    assert done.returncode == 2, done.stderr
    lines = [x for x in done.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_bad_inputs_are_one_line_and_write_nothing(explained, minilm_adapters, tmp_path, monkeypatch, capsys):
    """Two bad inputs through the installed script in a fresh process (one refused before the
    model loads, one after); the others in-process (``fails_in_process``: the same one line,
    exit code 2)."""
    merged, rows = explained / "merged", explained / "probe.jsonl"
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "notext.jsonl").write_text('{"sentence": "hello"}\n')
    (tmp_path / "notafolder").mkdir()
    (tmp_path / "notafolder" / "x.txt").write_text("x")
    assert "no such file" in fails(eigenmix("explain", merged, "--inputs", tmp_path / "missing.jsonl", "--out", tmp_path / "o"))
    cases = {
        "has no rows": ("explain", merged, "--inputs", tmp_path / "empty.jsonl", "--out", tmp_path / "o"),
        "no field 'text'": ("explain", merged, "--inputs", tmp_path / "notext.jsonl", "--out", tmp_path / "o"),
        "not an adapter, library or tuned folder": ("explain", tmp_path / "notafolder", "--inputs", rows, "--out", tmp_path / "o"),
        "no such folder": ("explain", tmp_path / "nowhere", "--inputs", rows, "--out", tmp_path / "o"),
        "--router": ("explain", merged, "--inputs", rows, "--out", tmp_path / "o", "--router", "magic"),
        "input": ("explain", merged, "--inputs", rows, "--out", merged),  # the output may not be the target
    }
    for expect, args in cases.items():
        assert expect in fails_in_process(monkeypatch, capsys, *args), expect
    # an adapter of another model: its layers are not the base model's
    other = raw_adapter(
        tmp_path / "other", {"encoder.layer.0.attention.self.query": (10, 12)}, base="sentence-transformers/all-MiniLM-L6-v2"
    )
    assert "the model's nn.Linear is (384, 384)" in fails(eigenmix("explain", other, "--inputs", rows, "--out", tmp_path / "o"))
    # a merge whose modules are gone
    moved = tmp_path / "moved"
    shutil.copytree(merged, moved)
    report = json.loads((moved / "merge_report.json").read_text())
    report["config"]["modules"][0]["path"] = str(tmp_path / "gone")
    (moved / "merge_report.json").write_text(json.dumps(report))
    assert "holds no adapter now" in fails_in_process(monkeypatch, capsys, "explain", moved, "--inputs", rows, "--out", tmp_path / "o")
    # a merge whose module folder now holds another adapter
    shutil.copytree(minilm_adapters / "adapters" / "cola", tmp_path / "swapped" / "trec")  # same name, other weights
    report["config"]["modules"][0]["path"] = str(tmp_path / "swapped" / "trec")
    (moved / "merge_report.json").write_text(json.dumps(report))
    assert "is not the adapter this output was made from" in fails_in_process(
        monkeypatch, capsys, "explain", moved, "--inputs", rows, "--out", tmp_path / "o"
    )
    assert "reads at most 512 tokens" in fails_in_process(
        monkeypatch, capsys, "explain", merged, "--inputs", rows, "--out", tmp_path / "o", "--max-length", "1000"
    )
    assert "only a library is routed" in fails_in_process(
        monkeypatch, capsys, "explain", merged, "--inputs", rows, "--out", tmp_path / "o", "--router", "uniform"
    )
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_a_tuned_composition_is_explained_at_its_learned_coefficients(explained, minilm_adapters, tmp_path):
    from test_tune_text import write_config

    write_config(minilm_adapters, tmp_path / "tune.yaml")
    ok(eigenmix("tune", tmp_path / "tune.yaml", "--out", tmp_path / "tuned"))
    ok(eigenmix("explain", tmp_path / "tuned", "--inputs", explained / "probe.jsonl", "--out", tmp_path / "et"))
    doc = json.loads((tmp_path / "et" / "explain.json").read_text())
    assert doc["kind"] == "tuned" and doc["parts"] == ["trec", "cola"]  # a tune at level lambda reweights: no residual
    for shares in doc["layer_shares"].values():
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
