"""Training kinds (eigenmix.kinds): each against an independent computation, and a
trained module of each kind saved as a PEFT adapter that PEFT and eigenmix read back."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from eigenmix.errors import InvalidInputError
from eigenmix.kinds import LayerContext, all_kinds, attach, get_kind, library_bases, target_layers
from eigenmix.kinds.registry import TrainKind, register
from eigenmix.modules import LowRankDelta, Module


class ConvNet(nn.Module):
    """A linear and two convs (3×3 with stride and padding, 1×1): every site kind."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.point = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.point(torch.relu(self.conv(x))).mean((2, 3)))


def _net() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet().eval()


def _perturb(attached, seed: int = 1) -> None:
    """Move every trained parameter off its start, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in attached.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _ctx(library=None) -> LayerContext:
    return LayerContext(torch.Generator().manual_seed(0), library)


def _dense(layer) -> torch.Tensor:
    B, A = layer.factors()
    return (B @ A).detach().double()


def test_the_registry_holds_five_kinds_and_refuses_what_it_does_not_know():
    assert [k.name for k in all_kinds()] == ["lora", "orthogonal", "pissa", "spectral_adapter", "svf"]
    with pytest.raises(ValueError, match="registered twice"):
        register(TrainKind("lora", get_kind("lora").layer, get_kind("lora").params, "d", None, None, "r"))
    with pytest.raises(InvalidInputError, match=r"unknown training kind 'svd' \(did you mean 'svf'\?\) \(choose from lora, orthogonal"):
        get_kind("svd")
    with pytest.raises(InvalidInputError, match="kind 'lora', parameter 'rank'"):
        get_kind("lora").parse_params({"rank": 4})
    assert get_kind("svf").parse_params({}).r is None and get_kind("pissa").parse_params({"r": 4}).r == 4
    assert get_kind("svf").parse_params({}).lr_ratio == 10.0 and get_kind("lora").parse_params({}).lr_ratio == 1.0
    assert get_kind("svf").parse_params({"lr_ratio": 3}).lr_ratio == 3.0  # a whole number is a float


def test_lora_starts_as_peft_does():
    W = torch.randn(12, 40)
    layer = get_kind("lora").layer(W, get_kind("lora").parse_params({"r": 4}), _ctx())
    assert torch.equal(layer.B, torch.zeros(12, 4)) and layer.A.abs().max() <= 1 / 40**0.5
    peft = get_peft_model(nn.Sequential(nn.Linear(40, 12)), LoraConfig(r=4, lora_alpha=16, target_modules=["0"]))
    bound = 1 / 40**0.5  # PEFT's kaiming_uniform_(a=√5) on (r, n)
    assert peft.base_model.model[0].lora_A["default"].weight.abs().max() <= bound and layer.A.abs().max() > 0.8 * bound
    assert layer.scale == 4.0


def test_pissa_starts_as_peft_does_and_its_residual_plus_adapter_is_the_base_weight():
    torch.manual_seed(3)
    base = nn.Sequential(nn.Linear(40, 12))
    W = base[0].weight.detach().clone()
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["0"], init_lora_weights="pissa"))
    layer = get_kind("pissa").layer(W, get_kind("pissa").parse_params({"r": 4, "alpha": 8.0}), _ctx())
    lora = peft.base_model.model[0]
    assert torch.allclose(layer.A0, lora.lora_A["default"].weight, atol=1e-6)
    assert torch.allclose(layer.B0, lora.lora_B["default"].weight, atol=1e-6)
    residual = lora.base_layer.weight.detach()  # PEFT's rewritten base: W − s B₀A₀
    assert torch.allclose(residual + layer.scale * layer.B0 @ layer.A0, W, atol=1e-6)
    assert _dense(layer).abs().max() < 1e-6  # at the start the update is zero


def test_svf_at_scales_one_is_the_base_model_exactly_and_its_update_is_a_rescaled_spectrum():
    net, x = _net(), torch.randn(2, 3, 8, 8)
    before = net(x)
    attached = attach(net, get_kind("svf"), get_kind("svf").parse_params({}), ["conv", "point", "fc"], seed=0)
    assert torch.equal(net(x), before)
    _perturb(attached)
    layer = attached.layers["fc"]
    U, S, Vh = torch.linalg.svd(net.fc.weight.detach().double(), full_matrices=False)
    expected = U @ torch.diag(S * (layer.z.detach().double() - 1)) @ Vh
    assert torch.allclose(_dense(layer), expected, atol=1e-5)
    assert sum(p.numel() for p in attached.parameters()) == 6 + 5 + 4  # min(m, n) a layer


def test_the_spectral_adapter_moves_the_top_singular_vectors():
    W = torch.randn(12, 40, dtype=torch.float64).float()
    layer = get_kind("spectral_adapter").layer(W, get_kind("spectral_adapter").parse_params({"r": 3}), _ctx())
    assert _dense(layer).abs().max() < 1e-5
    with torch.no_grad():
        layer.AU.normal_(), layer.AV.normal_()
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    Ur, Sr, Vr = U[:, :3], torch.diag(S[:3]), Vh[:3].T
    AU, AV = layer.AU.double() / S[:3], layer.AV.double() / S[:3]  # the additions are divided by the singular values
    expected = (Ur + AU) @ Sr @ (Vr + AV).T - Ur @ Sr @ Vr.T
    assert torch.allclose(_dense(layer), expected.detach(), atol=1e-4)
    assert sum(p.numel() for p in layer.parameters()) == 3 * (12 + 40)


def _library(shapes, seed=0, r=3):
    g = torch.Generator().manual_seed(seed)
    def delta(m: int, n: int) -> LowRankDelta:
        return LowRankDelta(torch.randn(m, r, generator=g), torch.randn(r, n, generator=g))

    return [Module(f"m{k}", {name: delta(m, n) for name, (m, n) in shapes.items()}) for k in range(2)]


def test_an_orthogonal_module_is_orthogonal_to_every_library_module_on_both_sides():
    library = _library({"fc": (20, 30)})
    bases = library_bases(library)
    layer = get_kind("orthogonal").layer(torch.randn(20, 30), get_kind("orthogonal").parse_params({"r": 4}), _ctx(bases["fc"]))
    with torch.no_grad():
        layer.B.normal_(), layer.A.normal_()
    new = _dense(layer)
    assert new.norm() > 1
    for module in library:
        old = module.layers["fc"].dense().double()
        assert (old.T @ new).abs().max() < 1e-6 * old.norm() * new.norm()  # column spaces
        assert (old @ new.T).abs().max() < 1e-6 * old.norm() * new.norm()  # row spaces


@given(st.integers(1, 4), st.integers(0, 10_000))
def test_library_bases_are_orthonormal_and_span_every_module(r, seed):
    library = _library({"x": (9, 11)}, seed=seed, r=r)
    basis = library_bases(library)["x"]
    for Q in (basis.Q_out, basis.Q_in):
        assert torch.allclose(Q.T @ Q, torch.eye(Q.shape[1]), atol=1e-5)
    assert basis.Q_out.shape[1] == min(2 * r, 9) and basis.Q_in.shape[1] == min(2 * r, 11)
    for module in library:
        d = module.layers["x"].dense()
        assert torch.allclose(basis.Q_out @ (basis.Q_out.T @ d), d, atol=1e-4 * d.norm())


@pytest.mark.parametrize("kind", ["lora", "pissa", "svf", "spectral_adapter", "orthogonal"])
def test_the_hooked_model_is_the_base_with_the_dense_update_and_peft_loads_the_saved_module(kind, tmp_path):
    """The hooks compute W + ΔW on a linear, a strided 3×3 conv and a 1×1 conv (an
    independent dense forward), and the saved adapter gives the same outputs in PEFT."""
    from eigenmix.io.peft_lora import read_lora_adapter, write_lora_adapter

    net, x = _net(), torch.randn(2, 3, 8, 8)
    names = target_layers(net, "conv|point|fc")
    bases = library_bases(_library({"fc": (4, 5)}, r=1)) if kind == "orthogonal" else None
    attached = attach(net, get_kind(kind), get_kind(kind).parse_params({"r": 2}), names, seed=0, library=bases)
    _perturb(attached)
    module = attached.module("trained", base_model="convnet")
    ref = copy.deepcopy(_net())
    with torch.no_grad():
        for name in names:
            ref.get_submodule(name).weight += module.layers[name].tensor()
    assert torch.allclose(net(x), ref(x), atol=1e-5)
    write_lora_adapter(module, tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(_net(), str(tmp_path / "adapter")).eval()
    assert torch.allclose(loaded(x), ref(x), atol=1e-5)
    back = read_lora_adapter(tmp_path / "adapter")
    for name in names:
        assert torch.allclose(back.layers[name].tensor(), module.layers[name].tensor(), atol=1e-6)
    attached.remove()
    assert torch.allclose(net(x), _net()(x))


def test_orthogonal_needs_a_library_and_targets_must_exist():
    with pytest.raises(InvalidInputError, match="needs a library"):
        attach(_net(), get_kind("orthogonal"), get_kind("orthogonal").parse_params({}), ["fc"], seed=0)
    with pytest.raises(InvalidInputError, match=r"no nn\.Linear or ungrouped nn\.Conv2d layer of the model matches 'nothing'"):
        target_layers(_net(), "nothing")
