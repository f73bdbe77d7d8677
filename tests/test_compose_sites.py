"""Sites: ``nn.Linear`` and ``nn.Conv1d/2d`` layers as rows in, rows out. A conv's rows are
its unfolded patches in the weight's ``(in, kh, kw)`` order, so the matrix view of its kernel
times the rows is the conv; an update hooked on a conv site equals the conv with the kernel
``W + ΔW``; the routed model and the Grams act on convs as on linears; grouped convs,
Conv3d and other padding modes are one line."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from eigenmix.compose import Library, RoutedModel, add_to_output, gram_statistics, site_at
from eigenmix.compose.routers import GivenRouter
from eigenmix.errors import InvalidInputError
from eigenmix.modules import LowRankDelta, Module


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2), st.integers(1, 2), st.booleans(), st.integers(0, 999))
def test_conv_rows_times_the_kernel_view_is_the_conv(kh, kw, stride, padding, dilation, bias, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 5, (kh, kw), stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    site = site_at(conv, "", tuple(conv.weight.shape))
    rows = site.rows(x)  # (2, H'·W', 3·kh·kw)
    y = conv(x)
    want = site.out_rows(y)
    got = rows @ conv.weight.flatten(1).T + (conv.bias if bias else 0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(site.back(want, y), y, rtol=0, atol=0)


def test_conv1d_and_padding_same_are_sites():
    torch.manual_seed(0)
    for conv, x in [(nn.Conv1d(3, 4, 3, padding="same").double(), torch.randn(2, 3, 10, dtype=torch.float64)),
                    (nn.Conv2d(3, 4, 3, padding="same", dilation=2).double(), torch.randn(2, 3, 7, 7, dtype=torch.float64))]:  # fmt: skip
        site = site_at(conv, "", tuple(conv.weight.shape))
        want = site.out_rows(conv(x))
        torch.testing.assert_close(site.rows(x) @ conv.weight.flatten(1).T + conv.bias, want, rtol=1e-10, atol=1e-10)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.mix(torch.relu(self.stem(pixel_values)))  # (batch, 8, H/2, W/2)
        return self.head(h.mean((2, 3)))


def cnn() -> CNN:
    torch.manual_seed(0)
    return CNN().eval()


def conv_module(name: str, seed: int, r: int = 2) -> Module:
    g = torch.Generator().manual_seed(seed)
    layers = {
        "stem": LowRankDelta(torch.randn(8, r, generator=g), torch.randn(r, 27, generator=g) * 0.3, 0.5, kernel=(8, 3, 3, 3)),
        "mix": LowRankDelta(torch.randn(8, r, generator=g), torch.randn(r, 8, generator=g) * 0.3, 0.5, kernel=(8, 8, 1, 1)),
        "head": LowRankDelta(torch.randn(4, r, generator=g), torch.randn(r, 8, generator=g) * 0.3, 0.5),
    }
    return Module(name, layers)


def with_deltas(deltas: dict[str, torch.Tensor]) -> CNN:
    model = cnn()
    with torch.no_grad():
        for layer, d in deltas.items():
            model.get_submodule(layer).weight += d
    return model


def test_an_update_hooked_on_conv_sites_is_the_conv_with_the_merged_kernel():
    module = conv_module("a", 1)
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    model = cnn()
    hooks = [add_to_output(model, layer, d.tensor_shape, lambda rows, d=d: rows @ d.dense().T) for layer, d in module.layers.items()]
    with torch.no_grad():
        got = model(x)
    for h in hooks:
        h.remove()
    want = with_deltas({layer: d.tensor() for layer, d in module.layers.items()})(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x), cnn()(x), rtol=0, atol=0)  # the hooks removed, the model as it was


def test_routed_model_on_convs_equals_the_given_mix_of_kernels():
    library = Library()
    modules = [conv_module(n, s) for n, s in (("a", 1), ("b", 2))]
    for m in modules:
        library.add(m)
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    g = torch.tensor([[0.3, 0.7], [1.0, 0.0]])
    routed = RoutedModel(cnn(), library, GivenRouter())
    with torch.no_grad():
        got = routed(pixel_values=x, given=g)
    for i in range(2):
        deltas = {layer: sum(float(g[i, k]) * m.layers[layer].tensor() for k, m in enumerate(modules)) for layer in modules[0].layers}
        want = with_deltas(deltas)(x[i : i + 1])
        torch.testing.assert_close(got[i : i + 1], want, rtol=1e-5, atol=1e-5)


def test_grams_of_a_conv_site_are_the_grams_of_its_patches():
    modules = [conv_module("a", 1), conv_module("b", 2)]
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    model = cnn()
    grams = gram_statistics(model, modules, [[{"pixel_values": x}], [{"pixel_values": x}]])
    patches = torch.nn.functional.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 27).double()  # module a's stem rows
    layer = grams.layer("stem", [0, 1])
    torch.testing.assert_close(layer.grams[0].double(), patches.T @ patches, rtol=1e-4, atol=1e-3)
    assert layer.tokens[0] == patches.shape[0]  # every output position of every image is a row


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.Conv2d(4, 8, 3, groups=2), "grouped Conv2d"),
        (nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), "padding_mode 'reflect'"),
        (nn.Conv3d(4, 8, 3), "Conv3d"),
        (nn.LayerNorm(4), "LayerNorm"),
    ],
)
def test_layers_that_are_no_site_are_one_line(layer, message):
    with pytest.raises(InvalidInputError, match=message):
        site_at(nn.Sequential(layer), "0", (8, 36))


def test_a_kernel_of_another_shape_is_one_line():
    with pytest.raises(InvalidInputError, match=r"kernel is \(8, 3, 3, 3\)"):
        site_at(cnn(), "stem", (8, 3, 5, 5))


def test_a_composition_on_conv_sites_starts_at_the_merge_and_exports_conv_layers():
    """Tuning's start (``task_arithmetic``: λ = scale) on the CNN equals the conv with the
    summed kernels; the exported module keeps each conv layer's kernel shape."""
    from eigenmix.tune import build, export_module

    modules = [conv_module("a", 1), conv_module("b", 2)]
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    comp = build(cnn(), modules, init="task_arithmetic", scale=0.5)
    with torch.no_grad():
        got = comp.model(x)
    want = with_deltas({layer: 0.5 * sum(m.layers[layer].tensor() for m in modules) for layer in modules[0].layers})(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    exported = export_module(comp)
    assert exported.layers["stem"].kernel == (8, 3, 3, 3) and exported.layers["head"].kernel is None
    summed = 0.5 * sum(m.layers["stem"].tensor() for m in modules)
    torch.testing.assert_close(exported.layers["stem"].tensor(), summed, rtol=1e-5, atol=1e-5)
    comp.detach_hooks()


def test_the_explain_recorder_on_conv_sites_sums_over_every_output_position():
    """A library of conv modules explained on images: each layer's ``Σ a aᵀ`` is over every
    output position of every image (the unfolded patches), with no per-token view (a CNN's
    layers see different positions)."""
    from eigenmix.explain import Recorder, from_library, record_rows

    library = Library()
    for m in (conv_module("a", 1), conv_module("b", 2)):
        library.add(m)
    directions = from_library(library)
    x = torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(6))
    base = cnn()
    rec = Recorder(base, directions, 2, 3, per_token=False)
    record_rows(base, rec, [([0, 1, 2], {"pixel_values": x})])  # the stem comes first: its rows are x's patches
    d = directions["stem"]
    patches = torch.nn.functional.unfold(x, 3, padding=1, stride=2).transpose(1, 2).double()  # (3, 25, 27): the stem's rows
    a = (patches @ d.V) * d.weight  # (3, 25, D)
    torch.testing.assert_close(rec.tallies["stem"].S, torch.einsum("rtd,rte->de", a, a), rtol=1e-9, atol=1e-9)
    assert rec.tokens == {}
    rec.close()
