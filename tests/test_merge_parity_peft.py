"""Parity with PEFT's ``add_weighted_adapter`` ``*_svd`` variants at full rank: the same
adapters merged by PEFT and by eigenmix give the same delta per layer (≤ 1e-5 relative)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

import eigenmix
from eigenmix.io import read_lora_adapter
from eigenmix.merging.elementwise import dare_linear_merge, dare_ties_merge

LAYERS = ("q", "v", "out")


class Square(nn.Module):
    """Every target 8×8, so one ``svd_rank=8`` is full rank for all of them."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.v, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.q(x)) * self.v(x))


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft_parity")
    torch.manual_seed(0)
    base = Square()
    folders = []
    for i, (r, alpha) in enumerate([(2, 4), (3, 3), (2, 8)]):
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(LAYERS)))
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        folders.append(root / f"a{i}")
        model.save_pretrained(str(folders[-1]))
    return base, folders


def peft_merge(base, folders, weights, combination_type, **kw) -> dict[str, torch.Tensor]:
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(folders[0]), adapter_name="a0")
    for i, folder in enumerate(folders[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(folders))]
    model.add_weighted_adapter(names, weights, "merged", combination_type=combination_type, svd_rank=8, **kw)
    return {layer: model.base_model.model.get_submodule(layer).get_delta_weight("merged").detach() for layer in LAYERS}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize(
    ("combination", "method", "weights", "params"),
    [
        ("svd", "linear", [0.5, 1.0, 1.5], {}),
        ("ties_svd", "ties", [1.0, 1.0, 1.0], {"density": 0.5}),
        ("magnitude_prune_svd", "magnitude_prune", [0.5, 1.0, 1.5], {"density": 0.5}),
    ],
)
def test_deterministic_variants(adapters, combination, method, weights, params):
    base, folders = adapters
    peft_kw = {"density": params["density"]} if "density" in params else {}
    expected = peft_merge(base, folders, weights, combination, **peft_kw)
    got = eigenmix.merge([read_lora_adapter(f) for f in folders], method, weights=weights, **params)
    for layer in LAYERS:
        assert rel(got.layers[layer].dense(), expected[layer]) <= 1e-5, layer


@pytest.mark.parametrize("combination", ["dare_ties_svd", "dare_linear_svd"])
def test_dare_variants_with_peft_masks(adapters, combination, monkeypatch):
    """PEFT draws its DARE masks from the global RNG (after initialising the new adapter);
    the masks it drew are recorded and passed to eigenmix's DARE as fixed masks."""
    import peft.utils.merge_utils as merge_utils

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = merge_utils.random_pruning

    def recording(tensor, density, rescale):
        out = original(tensor, density, rescale)
        seen.append((tensor.detach().clone(), (out != 0).to(torch.float64)))
        return out

    monkeypatch.setattr(merge_utils, "random_pruning", recording)
    base, folders = adapters
    weights, density = [1.0, 1.0, 1.0], 0.6
    expected = peft_merge(base, folders, weights, combination, density=density)
    modules = [read_lora_adapter(f) for f in folders]
    w = torch.tensor(weights, dtype=torch.float64)
    for layer in LAYERS:
        deltas32 = [m.layers[layer].dense() for m in modules]
        masks = torch.stack([next(mk for t, mk in seen if torch.allclose(t, d, atol=1e-6)) for d in deltas32])
        stacked = torch.stack([d.double() for d in deltas32])
        if combination == "dare_ties_svd":
            got = dare_ties_merge(stacked, w, masks, density=density, rescale="inverse_density", normalize=True)
        else:
            got = dare_linear_merge(stacked, w, masks, density=density, rescale="inverse_density")
        assert rel(got, expected[layer]) <= 1e-5, layer
