"""The streaming safetensors writer: files that the safetensors library reads back."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from eigenmix.io.stream_writer import StreamWriter


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool])
def test_round_trip_through_safetensors(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "base_model.model.layers.0.q.lora_A.weight": torch.randn(3, 17, generator=g),
        "b": torch.randn(5, generator=g),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }
    tensors = {k: (v > 0 if dtype == torch.bool else v.to(dtype)) for k, v in tensors.items()}
    with StreamWriter(tmp_path / "x.safetensors", list(tensors), {"format": "pt"}) as w:
        for name, t in tensors.items():
            w.add(name, t)
    back = load_file(str(tmp_path / "x.safetensors"))
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_header_larger_than_reserved(tmp_path):
    names = [f"n{i}" for i in range(40)]
    with StreamWriter(tmp_path / "x.safetensors", names[:1]) as w:  # under-announced names
        for i, name in enumerate(names):
            w.add(name, torch.full((i + 1,), float(i)))
    back = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(back[f"n{i}"], torch.full((i + 1,), float(i))) for i in range(40))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
