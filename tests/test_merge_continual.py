"""Continual merging: OPCM against its authors' code (FusionBench, fixture), and folding one
module at a time into task_arithmetic / linear equals merging all at once (1e-6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eigenmix.merging import merge
from eigenmix.merging.continual import fold, fold_all, load_state, outputs, save_state, start
from eigenmix.merging.methods.opcm import split_rank
from eigenmix.modules import DenseDelta, LowRankDelta, Module

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "opcm_reference.json").read_text())


def tensor(value) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


@pytest.mark.parametrize("case", ["basic_alpha0.5", "basic_alpha0.9"])
def test_opcm_equals_the_reference_code_after_every_step(case):
    c = FIXTURE["cases"][case]
    alpha = c["hyperparameters"]["alpha"]
    modules = [Module(f"task{i + 1}", {k: DenseDelta(tensor(v)) for k, v in tv.items()}) for i, tv in enumerate(c["task_vectors"])]
    state = start("opcm", {"alpha": alpha})
    for module, expected in zip(modules, c["steps"], strict=True):
        state = fold(state, module)
        assert state.info["lambda"] == pytest.approx(expected["lambda_t"], rel=1e-9)
        got = dict(outputs(state))
        for name, value in expected["merged_task_vector"].items():
            torch.testing.assert_close(got[name].dense(), tensor(value), atol=1e-9, rtol=1e-9)
    # the engine's all-at-once opcm is the same fold
    merged = merge(modules, "opcm", alpha=alpha)
    for name, value in c["steps"][-1]["merged_task_vector"].items():
        torch.testing.assert_close(merged.layers[name].dense(), tensor(value), atol=1e-9, rtol=1e-9)


def test_split_rank_is_the_references_rule():
    S = torch.tensor([4.0, 3.0, 2.0, 1.0])  # cumulative shares 0.4, 0.7, 0.9, 1.0
    assert [split_rank(S, a) for a in (0.3, 0.5, 0.8, 0.95)] == [0, 1, 2, 3]


def lora_module(name: str, seed: int, shapes=((12, 10), (8, 10)), r: int = 3) -> Module:
    g = torch.Generator().manual_seed(seed)
    layers = {
        f"layer{i}": LowRankDelta(torch.randn(m, r, generator=g), torch.randn(r, n, generator=g), 0.5) for i, (m, n) in enumerate(shapes)
    }
    return Module(name, layers, base_model="base")


@given(k=st.integers(2, 5), seed=st.integers(0, 1000), normalize=st.booleans(), scale=st.floats(0.1, 3.0))
@settings(max_examples=25, deadline=None)
def test_folding_one_at_a_time_equals_merging_all_at_once(k, seed, normalize, scale):
    modules = [lora_module(f"m{i}", seed + i) for i in range(k)]
    weights = [1.0 + 0.25 * i for i in range(k)]
    method, params = ("linear", {"normalize": normalize, "scale": scale}) if normalize else ("task_arithmetic", {"scale": scale})
    once = merge(modules, method, weights=weights, **params)
    state = start(method, params)
    for module, w in zip(modules, weights, strict=True):
        state = fold(state, module, w)
    for layer, delta in outputs(state):
        expected = once.layers[layer].dense().double()
        assert float((delta.dense() - expected).norm() / expected.norm()) < 1e-6


def test_a_saved_state_folds_on_exactly(tmp_path):
    modules = [lora_module(f"m{i}", i) for i in range(4)]
    state = fold_all(modules[:3], "opcm", {}, [1.0] * 3)
    save_state(state, tmp_path)
    loaded = load_state(tmp_path)
    assert loaded.modules == state.modules and loaded.info == state.info
    a, b = dict(outputs(fold(state, modules[3]))), dict(outputs(fold(loaded, modules[3])))
    for layer in a:
        torch.testing.assert_close(a[layer].dense(), b[layer].dense(), atol=0, rtol=0)


def test_folding_refuses_a_name_twice_another_base_and_other_shapes():
    from eigenmix.errors import InvalidInputError, ShapeMismatchError

    state = fold(start("task_arithmetic"), lora_module("a", 0))
    with pytest.raises(InvalidInputError, match="already in this merge"):
        fold(state, lora_module("a", 1))
    with pytest.raises(InvalidInputError, match="base model"):
        fold(state, Module("b", lora_module("b", 1).layers, base_model="other"))
    with pytest.raises(ShapeMismatchError, match="shape"):
        fold(state, lora_module("c", 2, shapes=((12, 9),)))
    with pytest.raises(InvalidInputError, match="cannot fold"):
        fold(start("ties"), lora_module("d", 3))


def write_config(path, method, modules, params=None, continue_from=None, **extra):
    import yaml

    cfg = {"method": method, "modules": [{"path": str(m), "weight": w} for m, w in modules], **extra}
    if params:
        cfg["parameters"] = params
    if continue_from is not None:
        cfg["continue_from"] = str(continue_from)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from common import raw_adapter

    root = tmp_path_factory.mktemp("continual")
    return [raw_adapter(root / f"a{i}", {"enc.q": (10, 12), "enc.v": (8, 12)}, seed=i) for i in range(3)], root


def dense(folder):
    from eigenmix.io import read_lora_adapter

    return {k: d.dense().double() for k, d in read_lora_adapter(folder).layers.items()}


@pytest.mark.parametrize(
    ("method", "params", "weights"),
    [
        ("task_arithmetic", {"scale": 0.4}, [1.0, 0.5, 2.0]),
        ("linear", {"normalize": True}, [1.0, 3.0, 0.5]),
        ("opcm", {"alpha": 0.5}, [1.0] * 3),
    ],
)
def test_eigenmix_merge_continue_from_equals_merging_all_at_once(raw, tmp_path, method, params, weights):
    """Through the installed script: merge two, fold the third in from the written state (the
    first two adapters' files are not read), and compare with the three merged at once."""
    from test_cli_smoke import eigenmix, ok

    (a, b, c), _ = raw
    ok(eigenmix("merge", write_config(tmp_path / "ab.yaml", method, [(a, weights[0]), (b, weights[1])], params), "--out", tmp_path / "ab"))
    assert (tmp_path / "ab" / "merge_state.json").is_file()
    moved = tmp_path / "c_only"
    shutil.copytree(c, moved)
    ok(
        eigenmix(
            "merge",
            write_config(tmp_path / "c.yaml", method, [(moved, weights[2])], params, continue_from=tmp_path / "ab"),
            "--out",
            tmp_path / "abc",
        )
    )
    all_cfg = write_config(tmp_path / "abc.yaml", method, [(a, weights[0]), (b, weights[1]), (moved, weights[2])], params)
    ok(eigenmix("merge", all_cfg, "--out", tmp_path / "once"))
    folded, once = dense(tmp_path / "abc"), dense(tmp_path / "once")
    for layer in once:
        assert float((folded[layer] - once[layer]).norm() / once[layer].norm()) < 1e-6
    state = json.loads((tmp_path / "abc" / "merge_state.json").read_text())
    assert state["modules"] == ["a0", "a1", "c_only"]


def test_continue_from_mistakes_are_one_line(raw, tmp_path, monkeypatch, capsys):
    """The first mistake through the installed script in a fresh process; the others, and
    the two merges they continue from, in-process (``fails_in_process``: the same one line,
    exit code 2)."""
    from common import fails_in_process, run_cli
    from test_cli_smoke import eigenmix

    (a, b, c), _ = raw
    for name, method in (("ab", "task_arithmetic"), ("ties", "ties")):
        cfg = write_config(tmp_path / f"{name}.yaml", method, [(a, 1.0), (b, 1.0)])
        assert run_cli(monkeypatch, "merge", cfg, "--out", tmp_path / name) == 0
    cfg = write_config(tmp_path / "1.yaml", "linear", [(c, 1.0)], continue_from=tmp_path / "ab")
    done = eigenmix("merge", cfg, "--out", tmp_path / "out")
    assert done.returncode == 2 and "is a 'task_arithmetic' merge" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out").exists()
    cases = [
        (write_config(tmp_path / "2.yaml", "task_arithmetic", [(c, 1.0)], {"scale": 0.5}, continue_from=tmp_path / "ab"), "parameters"),
        (write_config(tmp_path / "3.yaml", "task_arithmetic", [(a, 1.0)], continue_from=tmp_path / "ab"), "already in this merge"),
        (write_config(tmp_path / "4.yaml", "task_arithmetic", [(c, 1.0)], continue_from=tmp_path / "ties"), "no merge_state.json"),
        (write_config(tmp_path / "5.yaml", "ties", [(c, 1.0)], continue_from=tmp_path / "ab"), "cannot fold"),
    ]
    for cfg, message in cases:
        assert message in fails_in_process(monkeypatch, capsys, "merge", cfg, "--out", tmp_path / "out"), message
        assert not (tmp_path / "out").exists()
    cfg = write_config(tmp_path / "6.yaml", "task_arithmetic", [(c, 1.0)], continue_from=tmp_path / "ab")
    assert "input" in fails_in_process(monkeypatch, capsys, "merge", cfg, "--out", tmp_path / "ab", "--force")
