"""Images through the installed ``eigenmix`` script: a library of conv LoRA adapters on
EfficientNet-Lite0 (with their heads) routed over a folder of PNGs and over Fashion-MNIST's
IDX file, each row's prediction equal to PEFT's model with the routed mix; bad image inputs
are one line, exit code 2, nothing written."""

from __future__ import annotations

import copy
import json
import subprocess

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel
from PIL import Image
from safetensors.torch import save_file

from common import eigenmix_script, fails_in_process, fashion_pngs, save_random_adapter
from eigenmix.vision import features, inputs, load_efficientnet_lite0

TARGETS = ["_blocks.1._expand_conv", "_blocks.1._project_conv", "_conv_head"]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(eigenmix_script()), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two conv LoRA adapters with 3-class heads, a library of them, and 6 Fashion-MNIST PNGs."""
    root = tmp_path_factory.mktemp("vision_cli")
    lite0 = load_efficientnet_lite0()
    for i in range(2):
        config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS)
        folder = save_random_adapter(
            lite0, config, root / f"concept{i}", seed=40 + i, scale=0.05, only="lora_B", base_id="efficientnet-lite0"
        )
        g = torch.Generator().manual_seed(50 + i)
        head = {"weight": torch.randn(3, 1280, generator=g) * 0.1, "bias": torch.zeros(3)}
        save_file(head, str(folder / "head.safetensors"))
        (folder / "head.json").write_text(json.dumps({"task": f"concept{i}", "label_names": ["a", "b", "c"]}))
    done = run("library", "build", root / "concept0", root / "concept1", "--out", root / "lib")
    assert done.returncode == 0, done.stderr
    data = fashion_pngs(root / "pngs", 6, "img")
    return root, lite0, data


def expected_predictions(root, lite0, images, size=64):
    """The uniform mix of the two adapters (PEFT's cat merge at weights ½, ½), module 0's head."""
    model = PeftModel.from_pretrained(copy.deepcopy(lite0), str(root / "concept0"), adapter_name="a0")
    model.load_adapter(str(root / "concept1"), adapter_name="a1")
    model.add_weighted_adapter(["a0", "a1"], [0.5, 0.5], "mix", combination_type="cat")
    model.set_adapter("mix")
    from safetensors.torch import load_file

    h = load_file(str(root / "concept0" / "head.safetensors"))
    with torch.no_grad():
        f = features(model.eval(), inputs(size).pixels(images))
    return torch.softmax(f @ h["weight"].T + h["bias"], -1)


def test_route_a_png_folder_through_the_installed_script(setup):
    root, lite0, data = setup
    done = run("route", root / "lib", "--inputs", root / "pngs", "--out", root / "out", "--router", "uniform")
    assert done.returncode == 0, done.stderr
    routes = [json.loads(line) for line in (root / "out" / "routes.jsonl").read_text().splitlines()]
    probs = expected_predictions(root, lite0, data.images)
    assert [r["line"] for r in routes] == list(range(1, 7))
    for i, (r, p) in enumerate(zip(routes, probs, strict=True)):
        assert r["weights"] == {"concept0": 0.5, "concept1": 0.5} and r["module"] == "concept0"
        assert r["label"] == data.class_names[int(data.labels[i])]
        assert r["prediction"] == "abc"[int(p.argmax())]
        assert abs(r["probability"] - float(p.max())) <= 1e-4
    report = json.loads((root / "out" / "route_report.json").read_text())
    assert report["inputs_kind"] == "image" and report["image_size"] == 64


def test_route_fashion_mnist_idx_with_the_spectral_router(setup, tmp_path):
    root, _, _ = setup
    idx = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    done = run("route", root / "lib", "--inputs", idx, "--out", tmp_path / "out", "--limit", "300", "--batch-size", "100")
    assert done.returncode == 0, done.stderr
    routes = (tmp_path / "out" / "routes.jsonl").read_text().splitlines()
    assert len(routes) == 300
    first = json.loads(routes[0])
    assert set(first["weights"]) == {"concept0", "concept1"} and abs(sum(first["weights"].values()) - 1) < 1e-5


def png(folder, *images, listed=None):
    """PNGs (arrays, or raw bytes for a corrupt file) with a labels.csv naming the first ``listed``."""
    names = []
    for i, image in enumerate(images):
        path = folder / f"{i}.png"
        path.write_bytes(image) if isinstance(image, bytes) else Image.fromarray(image).save(path)
        names.append(path.name)
    rows = "".join(f"{n},x\n" for n in names[: len(names) if listed is None else listed])
    (folder / "labels.csv").write_text("file,label\n" + rows)
    return folder


@pytest.mark.parametrize(
    ("make", "flags", "message"),
    [
        (lambda d: (d / "rows.jsonl").write_text('{"text": "a cat"}\n') and d / "rows.jsonl", [], "image inputs are a folder of PNGs"),
        (lambda d: d, ["--image-size", "50"], "multiples of 32"),
        (lambda d: (d / "labels.csv").write_text("file,label\nmissing.png,cat\n") and d, [], "missing.png"),
        (lambda d: png(d, b"\x89PNG\r\n\x1a\nnot really"), [], "corrupt PNG"),
        (lambda d: png(d, np.zeros((28, 28, 4), np.uint8)), [], "mode 'RGBA'"),
        (lambda d: png(d, np.zeros((28, 28), np.uint8), np.zeros((30, 30), np.uint8)), [], "expected mode L size 28×28"),
        (lambda d: png(d, np.zeros((28, 28), np.uint8), np.zeros((28, 28), np.uint8), listed=1), [], "does not label"),
    ],
)
def test_bad_image_inputs_are_one_line(setup, tmp_path, make, flags, message, monkeypatch, capsys):
    """A corrupt PNG through the installed script in a fresh process; the others in-process
    (``fails_in_process``: the same one line, exit code 2)."""
    root, _, _ = setup
    (tmp_path / "in").mkdir()
    source = make(tmp_path / "in")
    args = ("route", root / "lib", "--inputs", source, "--out", tmp_path / "out", *flags)
    if message == "corrupt PNG":
        done = run(*args)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    else:
        assert message in fails_in_process(monkeypatch, capsys, *args)
    assert not (tmp_path / "out").exists()


def test_a_text_backbone_refuses_images_in_one_line():
    from eigenmix.data.images import ImageRow
    from eigenmix.errors import InvalidInputError
    from eigenmix.harness.backbones import Backbone
    from eigenmix.inputs import TextInputs

    with pytest.raises(InvalidInputError, match="takes text; these inputs are images"):
        Backbone("minilm", None, TextInputs(None)).batches([ImageRow(1, torch.zeros(4, 4, dtype=torch.uint8))], 1)


def test_a_calibrated_merge_of_conv_adapters_on_image_rows_through_the_script(setup, tmp_path):
    """regmean's Grams from images (a PNG folder for one module, Fashion-MNIST's IDX file for
    the other) through the installed script equal the Python API's on the same batches."""
    import yaml

    import eigenmix
    from eigenmix.compose import gram_statistics
    from eigenmix.data.images import read_image_inputs
    from eigenmix.io import read_lora_adapter
    from eigenmix.vision import load_efficientnet_lite0

    root, _, _ = setup
    idx = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    files = {"concept0": str(root / "pngs"), "concept1": idx}
    config = {
        "method": "regmean",
        "threads": 1,  # RegMean's solve amplifies the threads' rounding of the convs (1e-2 on Lite0's head conv): one on both sides
        "modules": [{"path": str(root / name), "name": name} for name in files],
        "calibration": {"modules": {name: {"file": f, "rows": 96} for name, f in files.items()}, "batch_size": 32, "image_size": 64},
    }
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    done = run("merge", tmp_path / "merge.yaml", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    modules = [read_lora_adapter(root / name, name=name) for name in files]
    model = load_efficientnet_lite0()
    # 96 rows where there are (the PNG folder has 6): Lite0's head conv sees 2 × 2 positions an image at 64 px
    stacks = [torch.stack([r.image for r in read_image_inputs(f, limit=96)]) for f in files.values()]
    batches = [[{"inputs": inputs(64).pixels(s[i : i + 32])} for i in range(0, len(s), 32)] for s in stacks]  # the script's

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = eigenmix.merge(modules, "regmean", calibration=gram_statistics(model, modules, batches, sketch_above=2048))
    finally:
        torch.set_num_threads(threads)
    got = read_lora_adapter(tmp_path / "out")
    for layer, delta in want.layers.items():
        a, b = got.layers[layer].tensor().double(), delta.tensor().double()
        assert float((a - b).norm() / b.norm()) <= 1e-4, layer
    bad = {**config, "calibration": {**config["calibration"], "image_size": 50}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    done = run("merge", tmp_path / "bad.yaml", "--out", tmp_path / "bad")
    assert done.returncode == 2 and "calibration.image_size 50" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_explain_a_library_of_concept_modules_on_images_through_the_script(setup, tmp_path):
    """Which concept's directions fired for each image: explain.json with one row per image,
    grouped by its label, shares adding to 1, no per-token view; report.html written."""
    root, _, data = setup
    done = run("explain", root / "lib", "--inputs", root / "pngs", "--out", tmp_path / "ex", "--router", "uniform")
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert [r["line"] for r in document["inputs"]] == list(range(1, 7))
    assert [r["group"] for r in document["inputs"]] == [data.class_names[int(y)] for y in data.labels]
    for r in document["inputs"]:
        assert set(r["shares"]) == {"concept0", "concept1"} and abs(sum(r["shares"].values()) - 1) < 1e-5
    assert document["tokens"] == [] and document["top_directions"]["concept0"]
    assert "<img" in (tmp_path / "ex" / "report.html").read_text()


def test_a_library_keeps_image_statistics_and_routes_with_the_learned_router(setup, tmp_path):
    """``library build --rows`` with image rows (a PNG folder; the first 512 images of an IDX
    file), then the routers that read them: the learned gate and spectral with stats."""
    root, _, _ = setup
    idx = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    done = run("library", "build", root / "concept0", root / "concept1", "--rows", f"concept0={root / 'pngs'}",
               "--rows", f"concept1={idx}", "--out", tmp_path / "lib")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for router, extra in (("learned", []), ("spectral", ["--calibration", "stats"])):
        out = tmp_path / f"out-{router}"
        done = run("route", tmp_path / "lib", "--inputs", root / "pngs", "--out", out, "--router", router, *extra)
        assert done.returncode == 0, done.stderr
        routes = [json.loads(line) for line in (out / "routes.jsonl").read_text().splitlines()]
        assert len(routes) == 6 and all(abs(sum(r["weights"].values()) - 1) < 1e-5 for r in routes)


def test_an_adapter_for_another_backbone_is_one_line(setup, tmp_path):
    """Lite0's conv adapters routed on the text encoder: its layers are not the model's."""
    root, _, _ = setup
    (tmp_path / "rows.jsonl").write_text('{"text": "a sandal"}\n')
    done = run("route", root / "lib", "--inputs", tmp_path / "rows.jsonl", "--out", tmp_path / "out",
               "--base-model", "sentence-transformers/all-MiniLM-L6-v2")  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "has no layer" in done.stderr and not (tmp_path / "out").exists()


def test_inspect_a_conv_adapter_shows_its_kernels_through_the_script(setup, tmp_path):
    """The spectrum of each conv layer is its matrix view's (``B·A`` times the scale), with the kernel shape beside."""
    from safetensors.torch import load_file

    root, _, _ = setup
    done = run("inspect", root / "concept0", "--json", tmp_path / "report.json")
    assert done.returncode == 0, done.stderr
    assert "(conv 1280×320×1×1)" in done.stdout
    layers = {r["layer"]: r for r in json.loads((tmp_path / "report.json").read_text())["layers"]}
    tensors = load_file(str(root / "concept0" / "adapter_model.safetensors"))
    prefix = "base_model.model._conv_head"
    B, A = tensors[f"{prefix}.lora_B.weight"].flatten(1), tensors[f"{prefix}.lora_A.weight"].flatten(1)
    expected = torch.linalg.svdvals((2.0 * B @ A).double())[:4]  # scale alpha / r = 8 / 4
    head = layers["_conv_head"]
    assert head["kernel"] == [1280, 320, 1, 1] and head["shape"] == [1280, 320]
    assert torch.allclose(torch.tensor(head["singular_values"][:4], dtype=torch.float64), expected, rtol=1e-5)
