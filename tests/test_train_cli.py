"""``eigenmix train`` through the installed script, each in a fresh process, on the real
all-MiniLM-L6-v2: a module of every kind (one orthogonal to a library), all then merged,
put in a library, routed and explained like any adapter, and loaded in PEFT; bad configs
are one line, exit code 2, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from common import fails_in_process, small_data
from test_cli_smoke import eigenmix, ok


def _config(path, body: str):
    path.write_text(body)
    return path


@pytest.fixture(scope="module")
def trained(minilm_adapters, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    small_data(root / "data", names=("sst2",))
    recipe = "recipe: {steps: 3, batch_size: 8, max_length: 32}\ndata_dir: data\n"
    cola = minilm_adapters / "adapters" / "cola"
    _config(root / "svf.yaml", f"task: sst2\nkind: svf\n{recipe}")
    _config(root / "orth.yaml", f"task: sst2\nkind: orthogonal\nparams: {{r: 4}}\nlibrary: [{cola}]\n{recipe}")
    out = ok(eigenmix("train", root / "svf.yaml", "--out", root / "svf"))
    assert "13,824 trained parameters" in " ".join(out.split())  # 384 singular values × 36 linears
    ok(eigenmix("train", root / "orth.yaml", "--out", root / "orth"))
    for kind in LORA_SHAPED:
        ok(eigenmix("train", _config(root / f"{kind}.yaml", f"task: sst2\nkind: {kind}\nparams: {{r: 2}}\n{recipe}"), "--out", root / kind))
    return root


LORA_SHAPED = ("lora", "pissa", "spectral_adapter")  # besides orthogonal (svf is a full-rank delta)


def test_an_orthogonal_module_stays_orthogonal_to_its_library_once_saved(trained, minilm_adapters):
    from eigenmix.io.peft_lora import read_lora_adapter

    new, old = read_lora_adapter(trained / "orth"), read_lora_adapter(minilm_adapters / "adapters" / "cola")
    assert set(new.layers) == set(old.layers) and len(new.layers) == 36
    for name in new.layers:
        a, b = old.layers[name].dense().double(), new.layers[name].dense().double()
        scale = a.norm() * b.norm()
        assert (a.T @ b).abs().max() < 1e-5 * scale and (a @ b.T).abs().max() < 1e-5 * scale
    meta = json.loads((trained / "orth" / "head.json").read_text())
    assert meta["task"] == "sst2" and meta["recipe"]["kind"] == "orthogonal" and meta["recipe"]["params"]["r"] == 4


def test_trained_modules_merge_route_explain_and_load_in_peft(trained, minilm_adapters, tmp_path):
    from peft import PeftModel

    from eigenmix.io.peft_lora import read_lora_adapter
    from eigenmix.train import load_encoder

    cola = minilm_adapters / "adapters" / "cola"
    modules = "".join(f"  - {{path: {trained / name}}}\n" for name in ("svf", "orth", *LORA_SHAPED))
    (tmp_path / "merge.yaml").write_text(f"method: task_arithmetic\nmodules:\n{modules}")
    ok(eigenmix("merge", tmp_path / "merge.yaml", "--out", tmp_path / "merged"))
    library = [trained / name for name in ("orth", *LORA_SHAPED)]
    ok(eigenmix("library", "build", *library, cola, "--out", tmp_path / "lib"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": t, "task": k}) + "\n" for t, k in [("a fine film", "sst2"), ("him the book gave", "cola")]))
    ok(eigenmix("route", tmp_path / "lib", "--inputs", rows, "--out", tmp_path / "routed"))
    ok(eigenmix("explain", tmp_path / "lib", "--inputs", rows, "--out", tmp_path / "ex"))  # (a rank-384 svf merge explains slowly)
    assert json.loads((tmp_path / "ex" / "explain.json").read_text())["parts"] == ["orth", *LORA_SHAPED, "cola"]
    encoder, tokenizer = load_encoder()
    enc = tokenizer(["a fine film"], return_tensors="pt")
    layer = "encoder.layer.0.attention.self.query"
    with torch.no_grad():
        base = encoder(**enc).last_hidden_state
        for name in ("svf", "orth", *LORA_SHAPED):  # each loads in PEFT and changes the outputs by its own delta
            module = read_lora_adapter(trained / name)
            peft = PeftModel.from_pretrained(encoder, str(trained / name)).eval()
            tuned = peft(**enc).last_hidden_state
            dense = peft.base_model.model.encoder.layer[0].attention.self.query.get_delta_weight("default")
            assert torch.allclose(dense, module.layers[layer].dense(), atol=1e-6), name
            assert not torch.allclose(tuned, base, atol=1e-4), name
            encoder = peft.unload()
    assert read_lora_adapter(trained / "svf").layers[layer].rank == 384


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("task: sst2\nkind: svd\n", "unknown training kind 'svd' (did you mean 'svf'?)"),
        ("task: sst2\nkind: orthogonal\n", "kind 'orthogonal' trains against a library"),
        ("task: sst2\nkind: lora\nparams: {rank: 4}\n", "kind 'lora', parameter 'rank'"),
        ("task: nope\n", "no task 'nope'"),
        ("task: sst2\nrecipe: {stpes: 3}\n", "did you mean 'steps'"),
    ],
)
def test_bad_configs_are_one_line_and_write_nothing(body, message, tmp_path, monkeypatch, capsys):
    """The first through the installed script in a fresh process; the others in-process
    (``fails_in_process``: the same one line, exit code 2)."""
    args = ("train", _config(tmp_path / "c.yaml", body), "--out", tmp_path / "o")
    if "svd" in body:
        done = eigenmix(*args)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    else:
        assert message in fails_in_process(monkeypatch, capsys, *args)
    assert not (tmp_path / "o").exists()


def test_a_dry_run_writes_nothing_and_kinds_are_listed(tmp_path):
    out = ok(eigenmix("train", _config(tmp_path / "c.yaml", "task: trec\nkind: pissa\n"), "--out", tmp_path / "o", "--dry-run"))
    assert "dry run" in out and "'pissa' module (r=8, lr_ratio=1.0, alpha=None)" in " ".join(out.split()) and not (tmp_path / "o").exists()
    listed = " ".join(ok(eigenmix("train", "--kinds")).split())
    assert all(k in listed for k in ("lora", "pissa", "svf", "spectral_adapter", "orthogonal"))


def test_an_image_module_through_the_script(tmp_path):
    """An svf module on Lite0's convs from a folder of labelled PNGs (2 steps at 32 px): a
    conv LoRA with its head; a text recipe field on an image module is one line."""
    from common import fashion_pngs
    from eigenmix.io.peft_lora import read_lora_adapter

    fashion_pngs(tmp_path / "pngs", n=12)
    config = _config(tmp_path / "image.yaml", "task: fashion\nimages: pngs\nkind: svf\nrecipe: {steps: 2, size: 32, batch_size: 4}\n")
    out = " ".join(ok(eigenmix("train", config, "--out", tmp_path / "svf")).split())
    assert "12 images at 32 px" in out and "trained parameters" in out
    meta = json.loads((tmp_path / "svf" / "head.json").read_text())
    assert meta["modality"] == "image" and meta["size"] == 32 and meta["recipe"]["kind"] == "svf"
    kernel = read_lora_adapter(tmp_path / "svf").layers["_conv_stem"].kernel
    assert kernel is not None and kernel[:2] == (32, 3) and len(kernel) == 4  # a conv LoRA
    bad = _config(tmp_path / "bad.yaml", "task: fashion\nimages: pngs\nrecipe: {max_length: 32}\n")
    done = eigenmix("train", bad, "--out", tmp_path / "o")
    assert done.returncode == 2 and "recipe.max_length" in done.stderr and not (tmp_path / "o").exists()
