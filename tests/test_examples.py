"""Every script in ``examples/`` runs in a fresh process on tiny inputs (exit code 0), and a
value it prints is checked against an independent computation: the merged adapter through
PEFT against eigenmix's merged deltas added to the weights by hand; the router's
coefficients against the spectral rule computed from the adapters' factors; the explained
shares against the dense attribution; the mergekit merge against ``base + λ Σ τ`` read from
the files; the merged conv concepts against their dense kernels, a top-1 routed concept
against PEFT; the zero-shot scores against the bridge API. A guard fails for a script in
``examples/`` that no test here runs."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import eigenmix
from eigenmix.data import bundled_data_dir, load_task, load_tasks
from eigenmix.io import CheckpointReader, read_lora_adapter
from eigenmix.merging import get_method

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
COVERED: set[str] = set()
SENTENCE = "Which river flows through Paris?"


def covers(script: str) -> Callable:
    """Mark a test as the one that runs ``examples/<script>`` (the guard below checks every script has one)."""
    COVERED.add(script)
    return lambda test: test


class Run:
    """``python examples/<script> args…`` started in a fresh process; :meth:`output` waits for it."""

    def __init__(self, script: str, *args: object, cwd: Path) -> None:
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1"}
        env.setdefault("OMP_NUM_THREADS", "1")  # on a shared 2-core machine, two threads per process spin against each other
        self.script, self._out = script, ""
        self.process = subprocess.Popen([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    def output(self) -> str:
        """Its stdout, once it has exited with code 0 (asserted)."""
        if not self._out:
            out, err = self.process.communicate(timeout=600)
            assert self.process.returncode == 0, f"{self.script} failed:\n{err[-4000:]}"
            self._out = out
        return self._out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture(scope="module", autouse=True)
def early(tmp_path_factory):
    """The examples that need no trained text adapters, started first so that they run while
    the session's adapters train (two cores): the mergekit merge of two tiny BERT fine-tunes,
    the concept modules the vision example trains and merges, the zero-shot bridge."""
    root = tmp_path_factory.mktemp("examples")
    base, fts = tiny_bert(root / "models")
    anchors = bridge_anchors(root / "anchors")
    runs = {
        "mergekit": Run("mergekit_finetune_merge.py", "--base", base, "--models", *fts, "--method", "task_arithmetic", "--lam", 0.8,
                        "--out", root / "merged", cwd=root),
        "vision": Run("vision_concepts.py", "--train-to", root / "concepts", "--steps", 5, "--images", 4, "--top-k", 1, cwd=root),
        "bridge": Run("bridge_zero_shot.py", "--image-anchors", anchors[0], "--text-anchors", anchors[1], "--rank", 16, "--images", 5,
                      "--size", 32, cwd=root),
    }  # fmt: skip
    yield root, runs
    for run in runs.values():  # only where a test that would have read it did not run
        run.stop()


def found(pattern: str, text: str) -> str:
    """The first group of ``pattern``'s first match in ``text`` (asserted to be there)."""
    match = re.search(pattern, text, re.M)
    assert match is not None, (pattern, text)
    return match.group(1)


def numbers(line: str, after: str = "") -> dict[str, float]:
    """``name=value`` pairs printed after ``after`` in ``line``."""
    return {k: float(v) for k, v in re.findall(r"(\S+?)=([-+]?[0-9.]+)", line.split(after, 1)[1] if after else line)}


@pytest.fixture(scope="module")
def encoder():
    from eigenmix.train import load_encoder

    return load_encoder()


def lora_deltas(folder: Path) -> dict[str, torch.Tensor]:
    """Layer → ``(α/r) B A`` in float64, read from the PEFT files (not through eigenmix)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    t = load_file(str(folder / "adapter_model.safetensors"))
    layers = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in t}
    scale = config["lora_alpha"] / config["r"]
    return {layer: scale * t[f"base_model.model.{layer}.lora_B.weight"].double() @ t[f"base_model.model.{layer}.lora_A.weight"].double()
            for layer in layers}  # fmt: skip


def layer_inputs(model: torch.nn.Module, layers: list[str], run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """The input ``(tokens, n)`` of each layer while ``run`` runs ``model`` on one row."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(layer).register_forward_hook(lambda m, x, y, layer=layer: seen.__setitem__(layer, x[0][0].double()))
             for layer in layers]  # fmt: skip
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.fixture(scope="module")
def text_runs(minilm_adapters, tmp_path_factory):
    """The three examples on the session's two tiny adapters (trec, cola), started together as
    soon as the adapters exist; each test below waits for its own."""
    root, a = tmp_path_factory.mktemp("text_examples"), minilm_adapters / "adapters"
    runs = {
        "merge": Run("merge_two_adapters.py", "--adapters", a / "trec", a / "cola", "--method", "tsv", "--out", root / "merged",
                     "--sentence", SENTENCE, cwd=root),
        "route": Run("route_mixed_stream.py", "--adapters", a / "trec", a / "cola", "--per-task", 2, cwd=root),
        "explain": Run("explain_prediction.py", "--adapters", a / "trec", a / "cola", "--per-task", 2, "--html", root / "r.html", cwd=root),
    }  # fmt: skip
    yield root, a, runs
    for run in runs.values():
        run.stop()


@covers("merge_two_adapters.py")
def test_merged_adapter_through_peft_is_eigenmix_merge_added_to_the_weights(text_runs, encoder):
    root, a, runs = text_runs
    out = runs["merge"].output()
    assert (root / "merged" / "adapter_config.json").is_file()
    printed = torch.tensor([float(v) for v in found(r"embedding\[:6\]: (.*)", out).split()], dtype=torch.float64)
    merged = eigenmix.merge([read_lora_adapter(a / "trec"), read_lora_adapter(a / "cola")], "tsv")
    model, tokenizer = copy.deepcopy(encoder[0]), encoder[1]
    with torch.no_grad():
        for layer, delta in merged.layers.items():  # W + ΔW by hand: no PEFT, no adapter file
            model.get_submodule(layer).weight += delta.dense().float()
        batch = tokenizer([SENTENCE], return_tensors="pt")
        embedding = model(**batch).last_hidden_state[0].mean(0).double()  # one row: every token is real
    assert torch.allclose(printed, embedding[:6], atol=2e-6), (printed, embedding[:6])
    assert abs(float(found(r"norm: ([0-9.]+)", out)) - float(embedding.norm())) < 1e-5


@covers("route_mixed_stream.py")
def test_route_weights_are_the_spectral_rule_on_the_adapters_factors(text_runs, encoder):
    _, a, runs = text_runs
    out = runs["route"].output()
    lines = [line for line in out.splitlines() if line.startswith("row ")]
    assert [found(r"task=(\S+)", line) for line in lines] == ["trec", "cola", "trec", "cola"]  # interleaved
    tests = {t: load_task(bundled_data_dir() / t).test for t in ("trec", "cola")}
    texts = [tests["trec"][0].text, tests["cola"][0].text, tests["trec"][1].text, tests["cola"][1].text]
    # each module's row space per layer, the span of its rank-8 lora_A (ΔW = B A, B of full rank): an orthonormal basis by QR
    factors = {name: load_file(str(a / name / "adapter_model.safetensors")) for name in ("trec", "cola")}
    bases = {name: {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight"): torch.linalg.qr(t.double().T).Q
                    for k, t in ts.items() if k.endswith("lora_A.weight")} for name, ts in factors.items()}  # fmt: skip
    model, tokenizer = encoder
    for line, text in zip(lines, texts, strict=True):
        weights = numbers(line.split("prediction:")[0], "weights:")
        assert abs(sum(weights.values()) - 1) < 2e-4 and found(r"top=(\S+)", line) == max(weights, key=lambda k: weights[k])
        batch = tokenizer([text], return_tensors="pt")
        x = layer_inputs(model, list(bases["trec"]), functools.partial(model, **batch))  # the scoring pass: the base model
        # a module's score: ‖V_kᵀ x_t‖ / ‖x_t‖ averaged over tokens, over its chance √(r/n), averaged over layers
        score = torch.stack([torch.stack([((x[l] @ bases[k][l]).norm(dim=-1) / x[l].norm(dim=-1)).mean() / (8 / x[l].shape[-1]) ** 0.5
                                          for l in x]).mean() for k in ("trec", "cola")])  # fmt: skip
        expected = torch.softmax(score / 0.2, 0)
        assert torch.allclose(torch.tensor([weights["trec"], weights["cola"]], dtype=torch.float64), expected, atol=2e-4), line


@covers("explain_prediction.py")
def test_explained_shares_are_the_dense_attribution(text_runs, encoder):
    root, a, runs = text_runs
    out = runs["explain"].output()
    assert "<html" in (root / "r.html").read_text()[:200]
    lines = [line for line in out.splitlines() if line.startswith("row ")]
    rows = [load_task(bundled_data_dir() / t).test[i].text for t in ("trec", "cola") for i in range(2)]
    assert len(lines) == len(rows)
    scale = get_method("task_arithmetic").params().scale  # the method's default λ, which the script uses
    parts = {name: {layer: scale * d for layer, d in lora_deltas(a / name).items()} for name in ("trec", "cola")}
    model, tokenizer = copy.deepcopy(encoder[0]), encoder[1]
    with torch.no_grad():
        for layer in parts["trec"]:  # the merged model: W + λ (ΔW_trec + ΔW_cola)
            model.get_submodule(layer).weight += (parts["trec"][layer] + parts["cola"][layer]).float()
    for i in (0, 2):  # a trec row and a cola row
        shares = numbers(lines[i], "task=")
        assert abs(sum(shares.values()) - 1) < 2e-4
        batch = tokenizer([rows[i]], return_tensors="pt")
        x = layer_inputs(model, list(parts["trec"]), functools.partial(model, **batch))
        # share of module k: Σ_layers Σ_tokens ⟨y_k, y⟩ / Σ ‖y‖², y_k = λ ΔW_k x, y = Σ_k y_k
        y = {k: {layer: x[layer] @ parts[k][layer].T for layer in x} for k in parts}
        total = {layer: y["trec"][layer] + y["cola"][layer] for layer in x}
        energy = sum(float((total[layer] ** 2).sum()) for layer in x)
        for k in parts:
            expected = sum(float((y[k][layer] * total[layer]).sum()) for layer in x) / energy
            assert abs(shares[k] - expected) < 2e-4, (lines[i], k, expected)


def read_all(path: Path) -> dict[str, torch.Tensor]:
    with CheckpointReader(path) as reader:
        return dict(reader.items())


def tiny_bert(root: Path) -> tuple[Path, list[Path]]:
    """A tiny random BERT and two fine-tunes of it that change every tensor a little."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(root / "base"))
    for i in range(2):
        model = BertModel.from_pretrained(str(root / "base"))
        with torch.no_grad():
            for p in list(model.parameters())[i::3]:  # each fine-tune changes every third tensor; a third stay as they were
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        model.save_pretrained(str(root / f"ft{i}"))
    return root / "base", [root / "ft0", root / "ft1"]


@covers("mergekit_finetune_merge.py")
def test_mergekit_config_merge_is_base_plus_lambda_times_the_task_vectors(early):
    root, runs = early
    out = runs["mergekit"].output()
    assert "merge_method: task_arithmetic" in out
    W = [read_all(root / "models" / name) for name in ("base", "ft0", "ft1")]
    merged = read_all(root / "merged")
    assert merged.keys() == W[0].keys()
    for name, w in W[0].items():  # mergekit's task_arithmetic: base + λ Σ_k w_k (ft_k − base)
        expected = w.double() + 0.8 * sum(ft[name].double() - w.double() for ft in W[1:])
        assert torch.allclose(merged[name].double(), expected, atol=1e-6), name
    changed = set(re.findall(r"^changed\s+(\S+)", out, re.M))
    assert changed == {name for name, w in W[0].items() if any(not torch.equal(ft[name], w) for ft in W[1:])}
    assert f"{len(W[0]) - len(changed)} of {len(W[0])} tensors unchanged" in out


@pytest.fixture(scope="module")
def concepts(early):
    """The two concept modules the script trained itself (5 steps at 32 px), and what it printed
    about the first 4 test images: per image, each head's answer on the merged model; the
    routing coefficients (top 1) and each head's answer on the routed model."""
    from eigenmix.data.images import fashion_mnist

    root, runs = early
    lines = [line for line in runs["vision"].output().splitlines() if line.startswith("image ")]
    assert len(lines) == 4
    merged = [numbers(line.split("|")[0], "merged:") for line in lines]
    weights = [numbers(line.split("routed (")[1].split(")")[0]) for line in lines]
    routed = [numbers(line.split("):")[1]) for line in lines]
    return root / "concepts", fashion_mnist("test", limit=4).images, merged, weights, routed


@covers("vision_concepts.py")
def test_merged_concepts_are_their_dense_kernels_added_to_lite0(concepts):
    from eigenmix.vision import image_features, load_efficientnet_lite0

    folder, images, merged_answers, _, _ = concepts
    names = ["sneaker", "trouser"]
    merged = eigenmix.merge([read_lora_adapter(folder / n, name=n) for n in names], "tsv")
    model = load_efficientnet_lite0()
    with torch.no_grad():
        for layer, delta in merged.layers.items():  # each conv kernel plus its merged delta, in the kernel's shape
            model.get_submodule(layer).weight += delta.tensor().float()
    features = image_features(model, images, 32)
    for answers, f in zip(merged_answers, features, strict=True):
        for n in names:
            head = load_file(str(folder / n / "head.safetensors"))
            assert abs(answers[n] - float(torch.softmax(f @ head["weight"].T + head["bias"], -1)[1])) < 2e-4


def test_a_top_1_routed_concept_is_that_adapter_alone_in_peft(concepts):
    from eigenmix.vision import image_features, load_image_adapter

    folder, images, _, weights, routed = concepts
    alone = {}  # concept → its "is it ...?" probability per image, through PEFT with that adapter alone
    for name in ("sneaker", "trouser"):
        model, head, _ = load_image_adapter(folder / name)
        with torch.no_grad():
            alone[name] = torch.softmax(head(image_features(model, images, 32)), -1)[:, 1]
    for i, (w, answers) in enumerate(zip(weights, routed, strict=True)):
        top = max(w, key=lambda k: w[k])
        assert sorted(w.values()) == [0.0, 1.0]
        assert abs(answers[top] - float(alone[top][i])) < 2e-4, (i, w, answers)


def bridge_anchors(folder: Path) -> tuple[Path, Path]:
    """Anchor files that need no ImageNet names (Debian's darknet need not be installed):
    Lite0's first 60 classifier rows paired with 60 bundled sentences. The pairing is
    arbitrary: what is checked is that the script computes what the bridge API computes."""
    from eigenmix.harness.anchors import image_anchors

    folder.mkdir()
    save_file({"features": image_anchors()[:60].float().contiguous()}, str(folder / "image.safetensors"))
    texts = [r.text.replace("\n", " ") for r in load_tasks(names=["ag_news"])[0].train[:60]]
    (folder / "texts.txt").write_text("\n".join(texts) + "\n")
    return folder / "image.safetensors", folder / "texts.txt"


@covers("bridge_zero_shot.py")
def test_zero_shot_scores_are_the_bridge_apis(early):
    from eigenmix.bridge import BridgeSettings, fit_bridge
    from eigenmix.data.images import FASHION_MNIST_CLASSES, fashion_mnist
    from eigenmix.harness.anchors import text_embeddings
    from eigenmix.vision import image_features, load_efficientnet_lite0

    root, runs = early
    X = F.normalize(load_file(str(root / "anchors" / "image.safetensors"))["features"].double(), dim=-1)
    texts = (root / "anchors" / "texts.txt").read_text().splitlines()
    Y = text_embeddings(texts + list(FASHION_MNIST_CLASSES))  # anchors and class names: one encoder load
    bridge = fit_bridge(X, Y[: len(texts)], BridgeSettings(image_rank=16, text_rank=16))
    images = fashion_mnist("test", limit=5)
    features = F.normalize(image_features(load_efficientnet_lite0(), images.images, 32).double(), dim=-1)
    scores = bridge.scores(features, Y[len(texts) :])
    out = runs["bridge"].output()
    lines = [line for line in out.splitlines() if line.startswith("image ")]
    assert len(lines) == 5
    for i, line in enumerate(lines):
        guess = int(scores[i].argmax())
        assert f"predicted={FASHION_MNIST_CLASSES[guess]} " in line
        assert abs(float(line.rsplit("score=", 1)[1]) - float(scores[i, guess])) < 1e-5
    correct = int((scores.argmax(-1) == images.labels).sum())
    assert f"zero-shot accuracy {correct}/5" in out


def test_every_example_is_run_by_a_test_and_listed_in_the_readme():
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == COVERED, (
        f"examples without a test here: {sorted(scripts - COVERED)}; tests of absent ones: {sorted(COVERED - scripts)}"
    )
    readme = (EXAMPLES / "README.md").read_text()
    assert not [s for s in scripts if f"examples/{s}" not in readme], "every example has its row (and command) in examples/README.md"
