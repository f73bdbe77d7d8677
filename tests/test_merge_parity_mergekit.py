"""Parity with mergekit on dense task vectors of a tiny Llama: ``task_arithmetic`` and
``ties`` through mergekit's own CLI, ``dare_ties`` with mergekit's masks fixed.

(A tiny BERT would be closer to the rest of the project, but mergekit 0.1.5 fails on its
BERT architecture file: ``list + tuple`` in ``plan_tensor``.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

import eigenmix
from eigenmix.io import CheckpointReader, load_task_vector
from eigenmix.merging.elementwise import dare_ties_merge

WEIGHTS = [0.6, 1.2]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("mergekit")
    config = LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    base.save_pretrained(str(root / "base"))
    fts = []
    for i in range(2):
        g = torch.Generator().manual_seed(100 + i)
        model = LlamaForCausalLM(config)
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.save_pretrained(str(root / f"ft{i}"))
        fts.append(root / f"ft{i}")
    return root / "base", fts


def run_mergekit(base: Path, fts: list[Path], out: Path, method: str, params: dict, model_params: dict) -> dict:
    config = {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(f), "parameters": {"weight": w, **model_params}} for f, w in zip(fts, WEIGHTS, strict=True)],
        "parameters": params,
        "dtype": "float32",
    }
    (out.parent / f"{out.name}.yml").write_text(yaml.safe_dump(config))
    script = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(script), str(out.parent / f"{out.name}.yml"), str(out), "--no-copy-tokenizer"], check=True, capture_output=True)
    with CheckpointReader(out) as reader:
        return dict(reader.items())


def eigenmix_full(base: Path, fts: list[Path], method: str, **params) -> dict:
    modules = [load_task_vector(base, f, name=f.name) for f in fts]
    merged = eigenmix.merge(modules, method, weights=WEIGHTS, **params)
    with CheckpointReader(base) as reader:
        weights = dict(reader.items())
    return {k: v + merged.layers[k].dense().to(v.dtype) if k in merged.layers else v for k, v in weights.items()}


def assert_same(got: dict, expected: dict) -> None:
    for name, tensor in expected.items():
        assert name in got, name
        err = float((got[name].double() - tensor.double()).norm() / max(float(tensor.double().norm()), 1e-12))
        assert err <= 1e-5, (name, err)


def test_task_arithmetic(checkpoints, tmp_path):
    base, fts = checkpoints
    expected = run_mergekit(base, fts, tmp_path / "ta", "task_arithmetic", {"lambda": 0.8}, {})
    assert_same(eigenmix_full(base, fts, "task_arithmetic", scale=0.8), expected)


def test_ties(checkpoints, tmp_path):
    base, fts = checkpoints
    expected = run_mergekit(base, fts, tmp_path / "ties", "ties", {"normalize": True}, {"density": 0.4})
    assert_same(eigenmix_full(base, fts, "ties", density=0.4, normalize=True), expected)


def test_dare_ties_with_mergekit_masks(checkpoints, tmp_path, monkeypatch):
    """mergekit's masks are recorded as it drops; fed to eigenmix's DARE-TIES (L1 rescale,
    no normalisation: mergekit's defaults) they give mergekit's result."""
    import mergekit.sparsify as sparsify
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    base, fts = checkpoints
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = sparsify.bernoulli

    def recording(tensor, density, rescale_norm=None):
        out = original(tensor, density, rescale_norm)
        seen.append((tensor.detach().clone(), (out != 0).to(torch.float64)))
        return out

    monkeypatch.setattr(sparsify, "bernoulli", recording)
    density = 0.5
    config = {
        "merge_method": "dare_ties",
        "base_model": str(base),
        "models": [{"model": str(f), "parameters": {"weight": w, "density": density}} for f, w in zip(fts, WEIGHTS, strict=True)],
        "dtype": "float32",
    }
    run_merge(MergeConfiguration.model_validate(config), str(tmp_path / "dt"), MergeOptions(copy_tokenizer=False, quiet=True))
    with CheckpointReader(tmp_path / "dt") as reader:
        expected = dict(reader.items())
    modules = [load_task_vector(base, f, name=f.name) for f in fts]
    with CheckpointReader(base) as reader:
        base_weights = dict(reader.items())
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    for name in modules[0].layers:
        deltas = [m.layers[name].dense() for m in modules]
        masks = torch.stack([next(mask for t, mask in seen if t.shape == d.shape and torch.equal(t, d)) for d in deltas])
        merged = dare_ties_merge(torch.stack([d.double() for d in deltas]), w, masks, density=density, rescale="l1", normalize=False)
        got = base_weights[name].double() + merged
        err = float((got - expected[name].double()).norm() / expected[name].double().norm())
        assert err <= 1e-5, (name, err)


def mergekit_yaml(path: Path, base: Path, fts: list[Path], method: str, params: dict, model_params: dict, **extra) -> Path:
    """A mergekit config as mergekit users write it: the base listed among the models (its
    task vector is zero; ``linear`` averages it in with its weight), per-model weight and density."""
    models = [{"model": str(base), **({"parameters": {"weight": 0.5}} if method == "linear" else {})}] + [
        {"model": str(f), "parameters": {"weight": w, **model_params}} for f, w in zip(fts, WEIGHTS, strict=True)
    ]
    path.write_text(yaml.safe_dump({"merge_method": method, "base_model": str(base), "models": models, "parameters": params,
                                    "dtype": "float32", **extra}))  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("method", "params", "model_params"),
    [("task_arithmetic", {"lambda": 0.8}, {}), ("ties", {"lambda": 0.9}, {"density": 0.4}), ("linear", {}, {})],
)
def test_the_same_mergekit_yaml_through_mergekit_yaml_and_eigenmix_merge(checkpoints, tmp_path, method, params, model_params):
    """One mergekit config, two command lines: ``mergekit-yaml`` and the installed ``eigenmix merge``."""
    from test_cli_smoke import eigenmix as run_eigenmix
    from test_cli_smoke import ok

    base, fts = checkpoints
    cfg = mergekit_yaml(tmp_path / "merge.yml", base, fts, method, params, model_params)
    script = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(script), str(cfg), str(tmp_path / "mk"), "--no-copy-tokenizer"], check=True, capture_output=True)
    ok(run_eigenmix("merge", cfg, "--out", tmp_path / "em"))
    with CheckpointReader(tmp_path / "mk") as reader:
        expected = dict(reader.items())
    with CheckpointReader(tmp_path / "em") as reader:
        got = dict(reader.items())
    assert set(got) >= set(expected)
    assert_same(got, expected)


def test_what_eigenmix_cannot_honour_in_a_mergekit_yaml_is_one_line(checkpoints, tmp_path, monkeypatch, capsys):
    """The first key through the installed script in a fresh process; the others in-process
    (``fails_in_process``: the same one line, exit code 2)."""
    from common import fails_in_process
    from test_cli_smoke import eigenmix as run_eigenmix

    base, fts = checkpoints
    cases = {
        "mergekit key 'slices'": {"slices": [{"sources": [{"model": str(fts[0]), "layer_range": [0, 1]}]}]},
        "mergekit key 'merge_method': 'slerp'": {"merge_method": "slerp"},
        "mergekit key 'models[1].model': 'someone/model' is not a local": {"models": [{"model": "someone/model"}]},
        "mergekit key 'models[].parameters.density'": {
            "models": [{"model": str(f), "parameters": {"weight": 1.0, "density": d}} for f, d in zip(fts, (0.3, 0.5), strict=True)]
        },
        "mergekit key 'parameters.density': a gradient": {"parameters": {"density": [0.2, 0.8]}},
        "mergekit key 'tokenizer_source'": {"tokenizer_source": "union"},
    }
    for expect, change in cases.items():
        cfg = mergekit_yaml(tmp_path / "bad.yml", base, fts, "ties", {}, {"density": 0.4})
        raw = yaml.safe_load(cfg.read_text())
        if "models" in change and change["models"][0]["model"] == "someone/model":
            change = {"models": [raw["models"][0], {"model": "someone/model"}]}
        cfg.write_text(yaml.safe_dump({**raw, **change}))
        if expect == "mergekit key 'slices'":
            done = run_eigenmix("merge", cfg, "--out", tmp_path / "o")
            assert done.returncode == 2 and expect in done.stderr and len(done.stderr.strip().splitlines()) == 1, (expect, done.stderr)
        else:
            assert expect in fails_in_process(monkeypatch, capsys, "merge", cfg, "--out", tmp_path / "o"), expect
    assert not (tmp_path / "o").exists()


def test_ties_on_bf16_fine_tunes_differs_from_mergekit_only_where_magnitudes_tie_at_the_threshold(checkpoints, tmp_path):
    """bf16 checkpoints make many task-vector entries equal in magnitude; which of those tied
    at the k-th largest a trim keeps is arbitrary in both libraries (mergekit: ``argsort``;
    eigenmix: ``topk``). Every entry where the two outputs differ is such a tie."""
    from test_cli_smoke import eigenmix as run_eigenmix
    from test_cli_smoke import ok

    base, fts = checkpoints
    folders = []
    for folder in (base, *fts):  # the same checkpoints in bf16
        with CheckpointReader(folder) as reader:
            tensors = {n: t.to(torch.bfloat16) for n, t in reader.items()}
        (tmp_path / folder.name).mkdir()
        save_file(tensors, str(tmp_path / folder.name / "model.safetensors"), metadata={"format": "pt"})
        (tmp_path / folder.name / "config.json").write_text((folder / "config.json").read_text())
        folders.append(tmp_path / folder.name)
    cfg = tmp_path / "ties.yml"
    models = [{"model": str(f), "parameters": {"weight": 1.0, "density": 0.5}} for f in folders[1:]]
    cfg.write_text(yaml.safe_dump({"merge_method": "ties", "base_model": str(folders[0]), "dtype": "float32", "out_dtype": "bfloat16",
                                   "models": models}))  # fmt: skip
    subprocess.run([str(Path(sys.executable).parent / "mergekit-yaml"), str(cfg), str(tmp_path / "mk"), "--no-copy-tokenizer"],
                   check=True, capture_output=True)  # fmt: skip
    ok(run_eigenmix("merge", str(cfg), "--out", tmp_path / "em"))
    readers = [CheckpointReader(f) for f in (*folders, tmp_path / "mk", tmp_path / "em")]
    differing = tied = 0
    for name in readers[0].keys():  # noqa: SIM118
        got, expected = readers[-1].get(name), readers[-2].get(name)
        assert got.dtype == expected.dtype == torch.bfloat16
        differs = (got != expected).reshape(-1)
        at_threshold = torch.zeros_like(differs)
        for ft in readers[1:3]:
            tau = (ft.get(name).float() - readers[0].get(name).float()).abs().reshape(-1)
            at_threshold |= tau == torch.topk(tau, max(1, int(0.5 * tau.numel()))).values[-1]
        differing, tied = differing + int(differs.sum()), tied + int((differs & at_threshold).sum())
    assert differing > 0 and tied == differing  # ties exist in bf16, and they are the only differences
