"""Task vectors from full safetensors checkpoints, read one tensor at a time."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import eigenmix
from eigenmix.errors import InvalidInputError, NonFiniteError, ShapeMismatchError
from eigenmix.io import CheckpointReader, load_task_vector
from eigenmix.modules import DenseDelta


def checkpoints(tmp_path, *, prefix=""):
    g = torch.Generator().manual_seed(0)
    base = {
        "encoder.layer.0.weight": torch.randn(8, 6, generator=g),
        "encoder.layer.0.bias": torch.randn(8, generator=g),
        "encoder.frozen.weight": torch.randn(5, 5, generator=g),
        "position_ids": torch.arange(6),
    }
    ft = {prefix + k: v.clone() for k, v in base.items()}
    ft[prefix + "encoder.layer.0.weight"] += 0.1 * torch.randn(8, 6, generator=g)
    ft[prefix + "encoder.layer.0.bias"] += 0.01
    ft["classifier.weight"] = torch.randn(3, 8, generator=g)
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(ft, str(tmp_path / "ft.safetensors"))
    return base, ft


def test_task_vector_values(tmp_path):
    base, ft = checkpoints(tmp_path)
    module = load_task_vector(tmp_path / "base.safetensors", tmp_path / "ft.safetensors")
    assert set(module.layers) == {"encoder.layer.0.weight", "encoder.layer.0.bias", "encoder.frozen.weight"}  # the int buffer skipped
    assert not module.layers["encoder.frozen.weight"].W.any()  # a frozen tensor is a zero delta, merged like mergekit merges it
    for name, delta in module.layers.items():
        assert isinstance(delta, DenseDelta)
        assert torch.equal(delta.W, ft[name] - base[name])
    assert module.layers["encoder.layer.0.weight"].is_matrix
    assert not module.layers["encoder.layer.0.bias"].is_matrix
    assert set(module.extras) == {"classifier.weight"}


def test_prefixed_classifier_checkpoint_aligns_to_base_names(tmp_path):
    base, ft = checkpoints(tmp_path, prefix="bert.")
    module = load_task_vector(tmp_path / "base.safetensors", tmp_path / "ft.safetensors")
    assert "encoder.layer.0.weight" in module.layers
    assert torch.equal(module.layers["encoder.layer.0.weight"].W, ft["bert.encoder.layer.0.weight"] - base["encoder.layer.0.weight"])


def test_sharded_checkpoint(tmp_path):
    base, ft = checkpoints(tmp_path)
    shard = tmp_path / "sharded"
    shard.mkdir()
    names = sorted(ft)
    save_file({k: ft[k] for k in names[:2]}, str(shard / "model-00001-of-00002.safetensors"))
    save_file({k: ft[k] for k in names[2:]}, str(shard / "model-00002-of-00002.safetensors"))
    weight_map = {k: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    module = load_task_vector(tmp_path / "base.safetensors", shard)
    assert torch.equal(module.layers["encoder.layer.0.weight"].W, ft["encoder.layer.0.weight"] - base["encoder.layer.0.weight"])


def test_reader_is_lazy(tmp_path):
    checkpoints(tmp_path)
    with CheckpointReader(tmp_path / "ft.safetensors") as reader:
        assert reader.shape("encoder.layer.0.weight") == (8, 6)
        assert "classifier.weight" in reader


def test_shape_mismatch(tmp_path):
    _, ft = checkpoints(tmp_path)
    ft["encoder.layer.0.weight"] = torch.zeros(8, 7)
    save_file(ft, str(tmp_path / "ft.safetensors"))
    with pytest.raises(ShapeMismatchError, match=r"encoder\.layer\.0\.weight"):
        load_task_vector(tmp_path / "base.safetensors", tmp_path / "ft.safetensors")


def test_nan_in_checkpoint(tmp_path):
    _, ft = checkpoints(tmp_path)
    ft["encoder.layer.0.bias"][0] = float("nan")
    save_file(ft, str(tmp_path / "ft.safetensors"))
    module = load_task_vector(tmp_path / "base.safetensors", tmp_path / "ft.safetensors")  # headers only: found when the layer is read
    with pytest.raises(NonFiniteError, match=r"encoder\.layer\.0\.bias"):
        module.layers["encoder.layer.0.bias"].dense()
    with pytest.raises(NonFiniteError):
        eigenmix.merge([module], "task_arithmetic")


def test_pickle_and_missing_checkpoints_are_refused(tmp_path):
    checkpoints(tmp_path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(InvalidInputError, match="pickle"):
        load_task_vector(tmp_path / "base.safetensors", tmp_path / "pytorch_model.bin")
    folder = tmp_path / "only_pickle"
    folder.mkdir()
    (tmp_path / "pytorch_model.bin").rename(folder / "pytorch_model.bin")
    with pytest.raises(InvalidInputError, match="pickle"):
        load_task_vector(tmp_path / "base.safetensors", folder)
    with pytest.raises(InvalidInputError, match="no such checkpoint"):
        load_task_vector(tmp_path / "base.safetensors", tmp_path / "nope.safetensors")


@pytest.mark.parametrize("base_dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ft_dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_task_delta_in_every_dtype_pair_leaves_the_base_alone(base_dtype, ft_dtype):
    """The base may be a reader's kept tensor (shared by every fine-tune): never modified."""
    from eigenmix.io.task_vector import task_delta

    g = torch.Generator().manual_seed(0)
    base, ft = torch.randn(4, 5, generator=g).to(base_dtype), torch.randn(4, 5, generator=g).to(ft_dtype)
    expected, kept = ft.double() - base.double(), base.clone()
    delta = task_delta(base, ft)
    assert delta.dtype == (torch.float64 if ft_dtype == torch.float64 else torch.float32) and torch.equal(base, kept)
    torch.testing.assert_close(delta.double(), expected.to(delta.dtype).double(), rtol=1e-6, atol=1e-7)
