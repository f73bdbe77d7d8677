"""Spectral MoE: the fast path equals the literal specification, a converted pretrained
layer keeps its outputs, gradients reach only the trainable parts, state dicts round-trip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from eigenmix.errors import InvalidInputError
from eigenmix.moe import SpectralMoEConv2d, SpectralMoELinear, convert, last_routing, param_groups


def randomize(layer: SpectralMoELinear, seed: int) -> SpectralMoELinear:
    """Move every trainable tensor away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("scales", "gate", "gate_bias", "router", "router_bias"):
            param = getattr(layer, name)
            if param is not None:
                param.copy_(torch.randn(param.shape, generator=g) * (0.5 if name != "scales" else 1.0) + (1 if name == "scales" else 0))
    return layer


@st.composite
def layers(draw):
    n, m = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rank = draw(st.none() | st.integers(1, min(m, n)))
    kwargs = {
        "n_experts": draw(st.integers(1, 6)),
        "rank": rank,
        "router": draw(st.sampled_from(["token", "feature"])),
        "mode": draw(st.sampled_from(["spectral", "output"])),
        "gate": draw(st.booleans()),
    }
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    linear = nn.Linear(n, m, bias=draw(st.booleans()))
    layer = randomize(SpectralMoELinear.from_linear(linear, **kwargs), seed)
    x = torch.randn(2, 3, n, generator=torch.Generator().manual_seed(seed + 1))
    return linear, layer, x


@given(layers())
def test_fast_path_equals_the_literal_specification(case):
    _, layer, x = case
    expected = layer.naive(x)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the in-place path of inference
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@given(layers())
def test_fast_path_with_trained_bases_equals_the_specification(case):
    linear, layer, x = case
    layer.train_bases(True)
    with torch.no_grad():
        layer.U.add_(0.1 * torch.randn_like(layer.U))
        layer.V.add_(0.1 * torch.randn_like(layer.V))
    torch.testing.assert_close(layer(x), layer.naive(x), atol=1e-5, rtol=1e-5)
    # the frozen remainder is the original one: W − U₀ diag(σ) V₀ᵀ
    fresh = SpectralMoELinear.from_linear(linear, layer.n_experts, layer.rank)
    torch.testing.assert_close(layer.residual, linear.weight - (fresh.U * fresh.sigma) @ fresh.V.T, atol=1e-6, rtol=1e-5)


def test_naive_follows_the_formulas_token_by_token():
    """An independent, per-token transcription of the seven steps of the specification."""
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    layer = randomize(SpectralMoELinear.from_linear(linear, 3, rank=2, router="feature"), 1)
    x = torch.randn(4, 6)
    W, b = linear.weight.detach().double(), linear.bias.detach().double()
    U, S, Vh = torch.linalg.svd(W)
    Uk, Sk, Vk = U[:, :2], S[:2], Vh[:2].T
    W_res = W - Uk @ torch.diag(Sk) @ Vk.T
    s, G, gb = layer.scales.detach().double(), layer.gate.detach().double(), layer.gate_bias.detach().double()
    R, rb = layer.router.detach().double(), layer.router_bias.detach().double()
    for t in range(4):
        xt = x[t].double()
        y_lin = W @ xt + b
        maps = [Vk @ torch.diag(Sk * s[e]) @ Uk.T for e in range(3)]  # (n, m): x ↦ x V diag(σ ⊙ s_e) Uᵀ
        y = [xt @ maps[e] + W_res @ xt + b for e in range(3)]
        g = torch.sigmoid(y_lin @ G + gb)
        y_bar = sum(g[e] * y[e] for e in range(3)) / 3
        rho = torch.sigmoid(xt @ R + rb)
        expected = rho * y_bar + (1 - rho) * y_lin
        torch.testing.assert_close(layer.naive(x[t : t + 1])[0].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["spectral", "output"])
@pytest.mark.parametrize("router", ["token", "feature"])
@pytest.mark.parametrize("rank", [1, 8, None])
def test_from_linear_keeps_the_pretrained_outputs(mode, router, rank):
    torch.manual_seed(0)
    linear = nn.Linear(48, 32)
    layer = SpectralMoELinear.from_linear(linear, 8, rank, router=router, mode=mode)
    x = torch.randn(64, 48) * 3
    with torch.no_grad():
        expected, got = linear(x), layer(x)
    assert float((got - expected).norm() / expected.norm()) <= 2e-4
    assert float(((got - expected).norm(dim=-1) / expected.norm(dim=-1)).max()) <= 1e-3


def test_svd_is_float64_and_stored_in_the_layer_dtype():
    torch.manual_seed(0)
    linear = nn.Linear(20, 10).to(torch.float64)
    layer = SpectralMoELinear.from_linear(linear, 2)
    assert layer.U.dtype == layer.sigma.dtype == torch.float64
    torch.testing.assert_close((layer.U * layer.sigma) @ layer.V.T, linear.weight.detach(), atol=1e-12, rtol=1e-12)
    half = SpectralMoELinear.from_linear(nn.Linear(20, 10).to(torch.bfloat16), 2, rank=4)
    assert half.U.dtype == half.sigma.dtype == half.scales.dtype == torch.bfloat16


@pytest.mark.parametrize("train_bases", [False, True])
def test_gradients_reach_only_scales_gates_and_routers(train_bases):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    report = convert(model, ["0", "2"], n_experts=3, rank=4, train_bases=train_bases)
    assert report.replaced == ("0", "2")
    randomize(model[0], 1)
    model(torch.randn(5, 8)).square().sum().backward()
    trainable = {"scales", "gate", "gate_bias", "router", "router_bias"} | ({"U", "V"} if train_bases else set())
    for name, param in model.named_parameters():
        leaf = name.split(".")[-1]
        if leaf in trainable:
            assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
        else:
            assert param.grad is None and not param.requires_grad, name
    expected = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[-1] in trainable)
    assert report.trainable_params == expected


def test_param_groups_train_the_scales_of_linears_and_convs_at_their_own_rate():
    """Adam's first step moves every parameter by its group's lr (times the sign of its
    gradient): the scales of a conv and of a linear by ``scales_lr_ratio × lr``, the gates,
    routers and any other trainable parameter by ``lr``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Flatten(), nn.Linear(6 * 4 * 4, 8), nn.LayerNorm(8), nn.Linear(8, 5))
    convert(model, ["0", "2"], n_experts=3)
    model[3].requires_grad_(True)  # a trainable layer that is not a Spectral MoE
    model[2].scales_lr_ratio = 7.0  # per layer
    randomize(model[0], 1), randomize(model[2], 2)
    lr = 1e-3
    groups = param_groups(model, lr)
    grouped = [p for group in groups for p in group["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model(torch.randn(2, 3, 4, 4)).square().sum().backward()
    torch.optim.AdamW(groups, weight_decay=0.0, eps=1e-30).step()
    expected_lr = {"0.scales": 30.0 * lr, "2.scales": 7.0 * lr}
    for name, param in model.named_parameters():
        if name in before:
            step = (param.detach() - before[name]).abs()
            torch.testing.assert_close(step, torch.full_like(step, expected_lr.get(name, lr)), rtol=1e-4, atol=1e-9)
    assert SpectralMoEConv2d.scales_lr_ratio == SpectralMoELinear.scales_lr_ratio == 30.0


def test_state_dict_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(0)
    for train_bases in (False, True):
        layer = randomize(SpectralMoELinear.from_linear(nn.Linear(10, 6), 4, rank=3, router="feature"), 2)
        layer.train_bases(train_bases)
        save_file({k: v.contiguous() for k, v in layer.state_dict().items()}, str(tmp_path / "moe.safetensors"))
        fresh = SpectralMoELinear(10, 6, 4, rank=3, router="feature")
        fresh.load_state_dict(load_file(str(tmp_path / "moe.safetensors")))
        x = torch.randn(3, 10)
        torch.testing.assert_close(fresh(x), layer(x), atol=0, rtol=0)


def test_convert_a_pretrained_encoder_keeps_its_outputs_and_exposes_routing():
    from eigenmix.train import BERT_LINEARS, load_encoder

    encoder, tokenizer = load_encoder()
    encoder.eval()
    batch = tokenizer(["a first sentence", "and another, longer one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = encoder(**batch).last_hidden_state
    report = convert(encoder, BERT_LINEARS, n_experts=4, rank=16)
    assert len(report.replaced) == 36
    # per layer: scales E·k, gate m·E + E, router n + 1
    expected = sum(4 * 16 + m.out_features * 4 + 4 + m.in_features + 1 for m in encoder.modules() if isinstance(m, SpectralMoELinear))
    assert report.trainable_params == expected
    with torch.no_grad():
        after = encoder(**batch).last_hidden_state
    assert float((after - before).norm() / before.norm()) <= 1e-3
    routing = last_routing(encoder)
    gate, router = routing["encoder.layer.0.attention.self.query"]
    assert gate.shape == (*batch["input_ids"].shape, 4) and router.shape == (*batch["input_ids"].shape, 1)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: SpectralMoELinear(8, 4, 2, rank=5), "rank must be between 1 and"),
        (lambda: SpectralMoELinear(8, 4, 0), "n_experts must be ≥ 1"),
        (lambda: SpectralMoELinear(8, 4, 2, router="expert"), "router must be"),
        (lambda: SpectralMoELinear(8, 4, 2, mode="input"), "mode must be"),
        (lambda: convert(nn.Sequential(nn.Linear(4, 4)), ["q_proj"], 2), "match no module"),
        (lambda: convert(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), r"\d", 2), "is a LayerNorm, not an nn.Linear"),
        (lambda: SpectralMoELinear.from_linear(nn.Conv1d(2, 2, 1), 2), "needs an nn.Linear"),
    ],
)
def test_bad_arguments_raise_one_clear_error(call, words):
    with pytest.raises(InvalidInputError, match=words) as info:
        call()
    assert "\n" not in str(info.value)
