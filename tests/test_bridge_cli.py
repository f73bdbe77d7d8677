"""``eigenmix bridge fit`` and ``classify`` through the installed script: the written bridge is
the API's on the same anchors; each image's scores are the bridge's on Lite0's features of it;
bad inputs are one line, exit code 2, nothing written."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from common import eigenmix_script, fails_in_process, fashion_pngs
from eigenmix.bench.bridge_figure import cats_and_dogs_png
from eigenmix.bridge import BridgeSettings, fit_bridge, load_bridge
from eigenmix.data.images import ImageRow
from eigenmix.harness.anchors import image_anchors, imagenet_classes, text_embeddings
from eigenmix.harness.bridge_run import image_features

N = 120  # ImageNet classes used as anchors (the first N)
FIT = {"image_rank": 24, "text_rank": 24, "eps": [1.0, 3.0], "power": [0.5]}


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(eigenmix_script()), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Anchor files of N ImageNet classes, a config, the bridge the script fits, and 6 PNGs."""
    root = tmp_path_factory.mktemp("bridge_cli")
    save_file({"features": image_anchors()[:N].float().contiguous()}, str(root / "image.safetensors"))
    (root / "names.txt").write_text("\n".join(imagenet_classes()[:N]) + "\n")
    (root / "bridge.yaml").write_text(yaml.safe_dump({"image_anchors": "image.safetensors", "text_anchors": "names.txt", "fit": FIT}))
    done = run("bridge", "fit", root / "bridge.yaml", "--out", root / "bridge")
    assert done.returncode == 0, done.stderr
    data = fashion_pngs(root / "pngs", 6, "")
    return root, data


def test_the_script_fits_the_apis_bridge(fitted):
    root, _ = fitted
    bridge = load_bridge(root / "bridge")
    X = torch.nn.functional.normalize(image_anchors()[:N].float().double(), dim=-1)
    expected = fit_bridge(X, text_embeddings(imagenet_classes()[:N]), BridgeSettings(**FIT))
    assert bridge.info["chosen"] == expected.info["chosen"] and bridge.info["anchor_texts"] == imagenet_classes()[:N]
    Y = text_embeddings(imagenet_classes()[:20])
    assert torch.allclose(bridge.similarity(X[:20], Y), expected.similarity(X[:20], Y), atol=1e-6)


def test_classify_pngs_by_class_names_through_the_script(fitted):
    root, data = fitted
    labels = "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
    done = run("bridge", "classify", root / "bridge", "--inputs", root / "pngs", "--labels", labels, "--out", root / "out")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (root / "out" / "predictions.jsonl").read_text().splitlines()]
    names = labels.split(",")
    bridge = load_bridge(root / "bridge")
    f = image_features([ImageRow(i + 1, data.images[i]) for i in range(6)], 64)
    expected = bridge.scores(f, text_embeddings(names))
    got = torch.tensor([[r["scores"][n] for n in names] for r in rows], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-5)
    assert [r["prediction"] for r in rows] == [names[k] for k in expected.argmax(-1).tolist()]
    report = json.loads((root / "out" / "classify_report.json").read_text())
    assert report["labelled_in_names"] == 6 and report["accuracy"] == sum(r["prediction"] == r["label"] for r in rows) / 6


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"image_anchors": "image.safetensors", "text_anchors": "short.txt"}, f"{N} image anchors but {N - 1} text anchors"),
        ({"image_anchors": "nan.safetensors", "text_anchors": "names.txt"}, "NaN/Inf"),
        ({"image_anchors": "image.safetensors", "text_anchors": "names.txt", "image_dim": 512}, "image_dim 512"),
        ({"image_anchors": "image.safetensors"}, "both image_anchors and text_anchors"),
        ({"image_anchors": "flat.safetensors", "text_anchors": "names.txt"}, "must be (n, d), got shape (120,)"),
    ],
)
def test_bad_bridge_configs_are_one_line(fitted, tmp_path, config, message, monkeypatch, capsys):
    """The NaN anchors through the installed script in a fresh process; the others in-process
    (``fails_in_process``: the same one line, exit code 2)."""
    root, _ = fitted
    for name in ("image.safetensors", "names.txt"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    (tmp_path / "short.txt").write_text("\n".join(imagenet_classes()[: N - 1]) + "\n")
    nan = image_anchors()[:N].float().contiguous()
    nan[3, 5] = float("nan")
    save_file({"features": nan}, str(tmp_path / "nan.safetensors"))
    save_file({"features": torch.zeros(N)}, str(tmp_path / "flat.safetensors"))
    (tmp_path / "bridge.yaml").write_text(yaml.safe_dump({**config, "fit": FIT}))
    args = ("bridge", "fit", tmp_path / "bridge.yaml", "--out", tmp_path / "out")
    if message == "NaN/Inf":
        done = run(*args)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert message in done.stderr
    else:
        assert message in fails_in_process(monkeypatch, capsys, *args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("labels", "inputs", "message"),
    [
        (",", "pngs", "none empty"),
        ("cat,cat", "pngs", "named twice"),
        ("cat", "pngs", "at least 2"),
        ("a,b", "nowhere", "no such file or folder"),
    ],
)
def test_bad_label_lists_and_inputs_are_one_line(fitted, tmp_path, labels, inputs, message, monkeypatch, capsys):
    """A label named twice through the installed script in a fresh process; the others
    in-process (``fails_in_process``: the same one line, exit code 2)."""
    root, _ = fitted
    args = ("bridge", "classify", root / "bridge", "--inputs", root / inputs, "--labels", labels, "--out", tmp_path / "out")
    if message == "named twice":
        done = run(*args)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert message in done.stderr
    else:
        assert message in fails_in_process(monkeypatch, capsys, *args)
    assert not (tmp_path / "out").exists()


def test_bench_bridge_quick_through_the_installed_script(tmp_path):
    """One split: every entry retrieves among the unseen names, the curve ends at the full bridge, cats and dogs are measured;
    results.png is the figure of the points results.json holds, linked from results.md."""
    done = run("bench", "bridge", "--quick", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"eigenmix bridge", "relative", "relative +csls", "procrustes", "cca", "ridge", "asif"} <= set(results["retrieval"])
    assert all(0 <= e["top1"] <= e["top5"] <= 1 for e in results["retrieval"].values())
    curve = results["feature_picking"]
    assert curve[max(curve, key=int)]["share_of_full"] == 1.0
    assert results["retrieval"]["eigenmix bridge"]["top1"] == curve[max(curve, key=int)]["top1"]
    assert len(results["cats_and_dogs"]["principal_angles_deg"]) == 5 and "Persian cat" in results["cats_and_dogs"]["names_nearest_cats"]
    plane = results["cats_and_dogs"]["plane"]
    assert len(plane["cats"]) == len(plane["cat_names"]) == 5 and len(plane["dogs"]) == 118 and set(plane["words"]) == {"cat", "dog"}
    points = [*plane["cats"], *plane["dogs"], *plane["words"].values(), plane["chelsea"]]
    assert all(len(p) == 2 and all(-1 <= v <= 1 for v in p) for p in points)  # cosines with the two directions
    assert min(x for x, _ in plane["cats"]) > max(x for x, _ in plane["dogs"])  # the cats' direction separates them
    png = (tmp_path / "out" / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    assert png == cats_and_dogs_png(results["cats_and_dogs"], results["feature_picking"])  # redrawn from the JSON alone
    assert "![cats and dogs in the joint space](results.png)" in (tmp_path / "out" / "results.md").read_text()


def test_explain_a_photo_and_a_text_through_the_script(fitted, tmp_path):
    """scikit-image's chelsea against 'a tabby cat': the directions' terms are the bridge's cosine of the pair."""
    from skimage import data as photos

    from eigenmix.bridge.explain import explain_pair

    root, _ = fitted
    Image.fromarray(photos.chelsea()).save(tmp_path / "chelsea.png")
    done = run("bridge", "explain", root / "bridge", "--image", tmp_path / "chelsea.png", "--text", "a tabby cat", "--top", "3",
               "--out", tmp_path / "out")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "explain.json").read_text())
    bridge = load_bridge(root / "bridge")
    chelsea = torch.from_numpy(photos.chelsea().copy()).permute(2, 0, 1).contiguous()
    x = image_features([ImageRow(1, chelsea)], 224)[0]
    names = imagenet_classes()[:N]
    expected = explain_pair(bridge, x, text_embeddings(["a tabby cat"])[0], text_embeddings(names), names, top=3)
    assert abs(result["cosine"] - expected["cosine"]) < 1e-5
    assert [d["index"] for d in result["directions"]] == [d["index"] for d in expected["directions"]]
    bad = run("bridge", "explain", root / "bridge", "--image", root / "names.txt", "--text", "x", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "PNG" in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists()
