"""Outputs appear whole or not at all."""

from __future__ import annotations

import pytest
import torch

from eigenmix.errors import InvalidInputError
from eigenmix.io import atomic_dir, write_lora_adapter
from eigenmix.modules import DenseDelta, LowRankDelta, Module


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(InvalidInputError, match="already exists"), atomic_dir(out):
        pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_writing_a_dense_layer_as_lora_fails_cleanly(tmp_path):
    module = Module("m", {"a": LowRankDelta(torch.ones(3, 1), torch.ones(1, 2)), "b": DenseDelta(torch.ones(3, 2))})
    with pytest.raises(InvalidInputError, match="dense delta"):
        write_lora_adapter(module, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
