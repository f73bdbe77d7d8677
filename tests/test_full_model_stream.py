"""Full fine-tunes stream in and out: task vectors read one layer at a time, the merged full
model written as it is merged into shards with an index (loaded by ``transformers``), in the
base's dtype (bf16/fp16 in → out) or the one asked for, equal to an in-memory reference."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import eigenmix
from common import run_cli
from eigenmix.io import CheckpointReader, LazyTaskVector, load_task_vector
from eigenmix.io.full_model import parse_shard_size


def tiny_bert(folder, seed=0, dtype=torch.float32):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=24
    )
    model = BertModel(config, add_pooling_layer=False).to(dtype)
    model.save_pretrained(str(folder), safe_serialization=True)
    return model


def fine_tunes(root, base_model, k=3, dtype=torch.float32):
    """``k`` fine-tunes: every floating tensor of the base moved a little (seeded)."""
    folders = []
    g = torch.Generator().manual_seed(7)
    state = {n: t.detach().clone() for n, t in base_model.state_dict().items()}
    for i in range(k):
        tensors = {
            n: (t.float() + 0.02 * torch.randn(t.shape, generator=g)).to(dtype) if t.is_floating_point() else t for n, t in state.items()
        }
        folder = root / f"ft{i}"
        folder.mkdir()
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text((root / "base" / "config.json").read_text())
        folders.append(folder)
    return folders


def merge_config(root, folders, method="task_arithmetic", **output):
    config = {"method": method, "base_model": str(root / "base"), "parameters": {"scale": 0.5} if method == "task_arithmetic" else {},
              "modules": [{"path": str(f)} for f in folders], "output": {"kind": "full", **output}}  # fmt: skip
    path = root / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_all(folder):
    with CheckpointReader(folder) as r:
        return {n: r.get(n) for n in r.keys()}  # noqa: SIM118


@pytest.fixture
def bert(tmp_path):
    base = tiny_bert(tmp_path / "base")
    return base, fine_tunes(tmp_path, base)


def test_sharded_full_output_equals_the_in_memory_merge_and_loads_in_transformers(tmp_path, bert, monkeypatch):
    from transformers import AutoModel

    base, folders = bert
    cfg = merge_config(tmp_path, folders, shard_size="1K")
    assert run_cli(monkeypatch, "merge", cfg, "--out", tmp_path / "out") == 0
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((tmp_path / "out" / s).is_file() for s in shards)
    assert set(index["weight_map"]) == set(base.state_dict())
    for s in shards:  # each shard within 1,000 parameters, or one larger tensor alone
        sizes = [t.numel() for t in load_file(str(tmp_path / "out" / s)).values()]
        assert sum(sizes) <= 1000 or len(sizes) == 1
    # reference: every task vector in memory, float64, summed
    fts = [read_all(f) for f in folders]
    expected = {}
    for name, w in base.state_dict().items():
        if w.is_floating_point():
            expected[name] = (w.double() + 0.5 * sum(ft[name].double() - w.double() for ft in fts)).float()
        else:
            expected[name] = w
    written = read_all(tmp_path / "out")
    for name, w in expected.items():
        torch.testing.assert_close(written[name], w, rtol=1e-6, atol=1e-6)
    loaded = AutoModel.from_pretrained(str(tmp_path / "out"), add_pooling_layer=False)
    assert set(loaded.state_dict()) == set(expected)
    for name, w in loaded.state_dict().items():
        torch.testing.assert_close(w, expected[name], rtol=1e-6, atol=1e-6)
    # the API collects the same iterator
    merged = eigenmix.merge([load_task_vector(tmp_path / "base", f) for f in folders], "task_arithmetic", scale=0.5)
    for layer, delta in merged.layers.items():
        torch.testing.assert_close(base.state_dict()[layer] + delta.dense().float(), written[layer], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_fine_tunes_in_and_out_against_a_float64_reference(tmp_path, dtype, monkeypatch):
    base = tiny_bert(tmp_path / "base", dtype=dtype)
    folders = fine_tunes(tmp_path, base, dtype=dtype)
    for method, params in (("task_arithmetic", {"scale": 0.5}), ("ties", {"density": 0.5, "scale": 1.0})):
        cfg = merge_config(tmp_path, folders, method)
        config = yaml.safe_load(cfg.read_text())
        config["parameters"] = params
        cfg.write_text(yaml.safe_dump(config))
        assert run_cli(monkeypatch, "merge", cfg, "--out", tmp_path / method) == 0
        written = read_all(tmp_path / method)
        fts = [read_all(f) for f in folders]
        modules = [load_task_vector(tmp_path / "base", f) for f in folders]
        reference = eigenmix.merge(modules, method, **params)  # the maths in float64 on the same stored values
        for name, w in base.state_dict().items():
            assert written[name].dtype == w.dtype  # bf16/fp16 in → bf16/fp16 out
            if not w.is_floating_point():
                continue
            exact = w.double() + reference.layers[name].dense().double() if name in reference.layers else w.double()
            torch.testing.assert_close(written[name].double(), exact.to(dtype).double(), rtol=0, atol=0)  # one rounding, at the end
        assert all(ft[n].dtype == dtype for ft in fts for n in ft if ft[n].is_floating_point())
    cfg = merge_config(tmp_path, folders, dtype="float32")
    assert run_cli(monkeypatch, "merge", cfg, "--out", tmp_path / "f32") == 0
    assert all(t.dtype == torch.float32 for n, t in read_all(tmp_path / "f32").items() if base.state_dict()[n].is_floating_point())


def test_task_vectors_are_read_one_layer_at_a_time(tmp_path, bert, monkeypatch):
    _, folders = bert
    reads: list[str] = []
    from eigenmix.io import safetensors_io

    read = safetensors_io._Layout.read
    monkeypatch.setattr(safetensors_io._Layout, "read", lambda self, fh, name: (reads.append(name), read(self, fh, name))[1])
    layer = "encoder.layer.0.attention.self.query.weight"
    module = load_task_vector(tmp_path / "base", folders[0])
    assert isinstance(module.layers, LazyTaskVector) and reads == []  # headers only
    assert module.shapes()[layer] == (16, 16) and layer in module.layers and reads == []
    delta = module.layers[layer]
    assert delta.shape == (16, 16) and delta.dtype == torch.float32 and reads == []  # a delta is read when used
    delta.dense()
    assert reads == [layer] * 2  # that layer of the base and of the fine-tune, not kept
    reads.clear()
    base = CheckpointReader(tmp_path / "base", keep_last=True)  # one reader of the base for every fine-tune
    modules = [load_task_vector(base, folder) for folder in folders[:2]]
    first, _ = (m.layers[layer].dense() for m in modules)
    assert reads == [layer] * 3  # the base once, each fine-tune once
    torch.testing.assert_close(first, load_task_vector(tmp_path / "base", folders[0]).layers[layer].dense(), rtol=0, atol=0)


def test_output_settings_are_checked(tmp_path, bert, monkeypatch, capsys):
    _, folders = bert
    assert parse_shard_size("5B") == 5_000_000_000 and parse_shard_size("500M") == 500_000_000 and parse_shard_size(1000) == 1000
    cfg = merge_config(tmp_path, folders, shard_size="lots")
    assert run_cli(monkeypatch, "merge", cfg, "--out", tmp_path / "o") == 2
    assert "shard size 'lots'" in capsys.readouterr().err
    config = yaml.safe_load(cfg.read_text())
    config["output"] = {"kind": "adapter", "shard_size": "1B"}
    cfg.write_text(yaml.safe_dump(config))
    assert run_cli(monkeypatch, "merge", cfg, "--out", tmp_path / "o") == 2
    assert "output.shard_size applies to output.kind 'full' only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_threads_and_shard_size_from_the_command_line(tmp_path, bert, monkeypatch):
    from test_cli_smoke import eigenmix as run_eigenmix
    from test_cli_smoke import ok

    _, folders = bert
    cfg = merge_config(tmp_path, folders)
    before = torch.get_num_threads()
    ok(run_eigenmix("merge", cfg, "--out", tmp_path / "out", "--threads", "1", "--out-shard-size", "3K"))
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["threads"] == 1 and report["config"]["output"]["shard_size"] == "3K"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    assert run_cli(monkeypatch, "merge", cfg, "--out", tmp_path / "o2", "--threads", "1") == 0
    assert torch.get_num_threads() == before  # restored after the merge


def test_small_dense_algebra_runs_on_one_thread():
    from eigenmix.spectral import small_op, torch_threads

    with torch_threads(2):
        with small_op(torch.zeros(64, 64)):
            assert torch.get_num_threads() == 1
        with small_op(torch.zeros(4096, 8)):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 2
