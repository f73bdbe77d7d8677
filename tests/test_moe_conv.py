"""The Spectral MoE as a drop-in ``nn.Conv2d``: its fast path (convs and 1×1 convs, never
an unfold) equals the literal per-expert specification on the unfolded patches for every
geometry, router, mode and the trainable-bases path, values and gradients; wrapping a
pretrained conv keeps its output; ``convert`` swaps a CNN's convs; a grouped conv is one line."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from eigenmix.errors import InvalidInputError
from eigenmix.moe import SpectralMoEConv2d, convert, last_routing


def randomised(layer: SpectralMoEConv2d, seed: int) -> SpectralMoEConv2d:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.scales, layer.gate, layer.gate_bias, layer.router, layer.router_bias):
            if p is not None:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return layer


@given(
    st.integers(1, 3), st.integers(1, 2), st.integers(0, 1), st.integers(1, 2), st.sampled_from(["token", "feature"]),
    st.sampled_from(["spectral", "output"]), st.integers(1, 5), st.integers(0, 99),
)  # fmt: skip
def test_fast_path_equals_the_specification(kernel, stride, padding, dilation, router, mode, experts, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(4, 6, kernel, stride=stride, padding=padding, dilation=dilation).double()
    layer = randomised(SpectralMoEConv2d.from_conv(conv, experts, rank=min(5, 4 * kernel * kernel), router=router, mode=mode), seed)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.naive(x), rtol=1e-10, atol=1e-10)
    with torch.inference_mode():  # the in-place path
        torch.testing.assert_close(layer(x), layer.naive(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("router", ["token", "feature"])
def test_gradients_and_trainable_bases_match_the_specification(router):
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for bases in (False, True):
        layer = randomised(SpectralMoEConv2d.from_conv(conv, 3, rank=4, router=router), 2)
        layer.train_bases(bases)
        grads = []
        for run in (layer, layer.naive):
            layer.zero_grad()
            run(x).square().sum().backward()
            grads.append([p.grad.clone() for p in layer.parameters() if p.requires_grad])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_a_wrapped_conv_starts_as_the_conv_and_without_a_gate_is_svf():
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    x = torch.randn(2, 8, 12, 12)
    layer = SpectralMoEConv2d.from_conv(conv, 8)
    with torch.no_grad():
        assert float((layer(x) - conv(x)).norm() / conv(x).norm()) < 1e-3
    svf = SpectralMoEConv2d.from_conv(conv.double(), 1, gate=False)
    with torch.no_grad():
        svf.scales.fill_(1.0)
        torch.testing.assert_close(svf(x.double()), conv(x.double()), rtol=1e-9, atol=1e-9)  # s = 1: the conv exactly


def test_convert_swaps_a_cnns_convs_and_linears():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    x = torch.randn(2, 3, 4, 4)
    before = model(x)
    report = convert(model, ["0", "2", "4"], n_experts=4, rank=4)
    assert isinstance(model[0], SpectralMoEConv2d) and isinstance(model[2], SpectralMoEConv2d)
    assert not isinstance(model[4], SpectralMoEConv2d)
    assert report.replaced == ("0", "2", "4")
    assert float((model(x) - before).norm() / before.norm()) < 1e-3
    gate, router = last_routing(model)["0"]
    assert gate is not None and gate.shape == (2, 4, 4, 4) and router is not None and router.shape == (2, 1, 4, 4)


@pytest.mark.parametrize(
    ("conv", "message"),
    [(nn.Conv2d(4, 8, 3, groups=2), "grouped Conv2d"), (nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), "padding_mode")],
)
def test_convs_it_cannot_take_are_one_line(conv, message):
    with pytest.raises(InvalidInputError, match=message):
        SpectralMoEConv2d.from_conv(conv, 4)
    with pytest.raises(InvalidInputError, match=message):
        convert(nn.Sequential(conv), ["0"], n_experts=2)
