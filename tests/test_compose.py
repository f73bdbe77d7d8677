"""The live library on a frozen model: against PEFT (each adapter alone, mixed-adapter
batches, Arrow routing) and the merge engine (uniform = the ``linear`` average); adding and
removing modules leaves the others' outputs bit-identical; save → load is exact; routers'
values by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file, save_file

import eigenmix
from common import base_model, inputs, make_adapter
from eigenmix.compose import Library, RoutedModel, load_library, pooled, save_library
from eigenmix.compose.routers import ArrowRouter, GivenRouter, LearnedRouter, SpectralRouter, UniformRouter, fit_gate, one_hot
from eigenmix.compose.routers.learned import Gate
from eigenmix.errors import InvalidInputError, ShapeMismatchError
from eigenmix.io import read_lora_adapter
from eigenmix.io.atomic import destination

TARGETS = ["q", "v", "out"]


def separated(folder, seed):
    """A rank-2 adapter whose top singular value stands well apart in every layer (so PEFT's
    15 power iterations find Arrow's prototype to float32 precision)."""
    make_adapter(folder, LoraConfig(r=2, lora_alpha=2, target_modules=TARGETS), seed=seed)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    for key in tensors:
        if "lora_B" in key:
            tensors[key][:, 0] *= 6.0
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.fixture
def adapters(tmp_path):
    return [separated(tmp_path / f"task_{i}", 30 + i) for i in range(3)]


def library_of(folders) -> Library:
    library = Library()
    for f in folders:
        library.add(read_lora_adapter(f))
    return library


def routed(library, router):
    return RoutedModel(base_model().eval(), library, router)


def peft_multi(folders) -> PeftModel:
    model = PeftModel.from_pretrained(base_model(), str(folders[0]), adapter_name=folders[0].name)
    for f in folders[1:]:
        model.load_adapter(str(f), adapter_name=f.name)
    return model.eval()


def test_each_module_alone_equals_the_peft_adapter(adapters):
    library, x = library_of(adapters), inputs()
    model = routed(library, GivenRouter())
    with torch.no_grad():
        for f in adapters:
            alone = PeftModel.from_pretrained(base_model(), str(f)).eval()(x)
            got = model(x, given=one_hot(library, [f.name] * len(x)))
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


def test_a_mixed_batch_equals_peft_adapter_names(adapters):
    """Each row its own module in one forward pass, as PEFT's ``adapter_names=``; a row with
    no module (None / PEFT's ``__base__``) gets the base model."""
    library, x = library_of(adapters), inputs(n=12)
    names = [adapters[i % 3].name for i in range(11)] + [None]
    peft = peft_multi(adapters)
    with torch.no_grad():
        expected = peft(x, adapter_names=[n or "__base__" for n in names])
        got = routed(library, GivenRouter())(x, given=one_hot(library, names))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_uniform_routing_equals_the_linear_average_merge(adapters):
    library, x = library_of(adapters), inputs()
    merged = eigenmix.merge([read_lora_adapter(f) for f in adapters], "linear", normalize=True)
    reference = base_model().eval()
    with torch.no_grad():
        for layer, delta in merged.layers.items():
            reference.get_submodule(layer).weight += delta.dense().float()
        torch.testing.assert_close(routed(library, UniformRouter())(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("top_k", "temperature"), [(2, 1.0), (1, 1.0), (3, 0.5)])
def test_arrow_equals_peft_arrow(adapters, top_k, temperature):
    from peft import ArrowConfig, create_arrow_model

    library, x = library_of(adapters), inputs()
    config = ArrowConfig(top_k=top_k, router_temperature=temperature, rng_seed=0)
    peft = create_arrow_model(base_model(), [str(f) for f in adapters], config).eval()
    with torch.no_grad():
        expected = peft(x)
        got = routed(library, ArrowRouter(top_k=top_k, temperature=temperature))(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_adding_and_removing_modules_leaves_the_others_bit_identical(adapters, tmp_path):
    library, x = library_of(adapters[:2]), inputs()
    names = [adapters[0].name] * 8 + [adapters[1].name] * 8
    with torch.no_grad():
        before = routed(library, GivenRouter())(x, given=one_hot(library, names))
        library.add(read_lora_adapter(adapters[2]))
        after = routed(library, GivenRouter())(x, given=one_hot(library, names))
        library.remove(adapters[2].name)
        removed = routed(library, GivenRouter())(x, given=one_hot(library, names))
    assert torch.equal(before, after) and torch.equal(before, removed)


def test_save_then_load_reproduces_the_outputs_exactly(adapters, tmp_path):
    library, x = library_of(adapters), inputs()
    save_library(library, destination(tmp_path / "lib", marker="library.json"))
    loaded = load_library(tmp_path / "lib")
    assert loaded.names == library.names and loaded.base_model == library.base_model
    with torch.no_grad():
        for router in (UniformRouter(), ArrowRouter(top_k=2), SpectralRouter()):
            assert torch.equal(routed(library, router)(x), routed(loaded, router)(x))


def test_bad_library_changes_get_one_error(adapters, tmp_path):
    library = library_of(adapters[:1])
    with pytest.raises(InvalidInputError, match="already has a module named"):
        library.add(read_lora_adapter(adapters[0]))
    with pytest.raises(InvalidInputError, match="no module 'nope'"):
        library.remove("nope")
    with pytest.raises(InvalidInputError, match="module name"):
        library.add(read_lora_adapter(adapters[1]), name="../evil")
    other = read_lora_adapter(adapters[1])
    other.base_model = "someone/else"
    library.base_model = "tiny/base"
    with pytest.raises(InvalidInputError, match="base model"):
        library.add(other)
    make_adapter(tmp_path / "wide", LoraConfig(r=2, lora_alpha=2, target_modules=["c_attn"]), kind="conv1d")
    wide = read_lora_adapter(tmp_path / "wide")
    wide = eigenmix.modules.Module("wide", {"encoder.q": next(iter(wide.layers.values()))})
    with pytest.raises(ShapeMismatchError, match=r"encoder\.q"):
        library.add(wide)
    assert library.names == (adapters[0].name,)


@pytest.mark.parametrize(
    ("breaker", "words"),
    [
        (lambda lib: (lib / "library.json").unlink(), "not a library"),
        (lambda lib: (lib / "library.json").write_text("{oops"), "not valid JSON"),
        (lambda lib: (lib / "library.json").write_text(json.dumps({"format": "x"})), "not an eigenmix library"),
        (lambda lib: next((lib / "modules").iterdir()).write_bytes(b"\x10\x00\x00"), "not a readable safetensors file"),
        (lambda lib: next((lib / "modules").iterdir()).unlink(), "no such file"),
    ],
)
def test_a_corrupt_library_folder_is_one_error(adapters, tmp_path, breaker, words):
    save_library(library_of(adapters), destination(tmp_path / "lib", marker="library.json"))
    breaker(tmp_path / "lib")
    with pytest.raises(InvalidInputError, match=words):
        load_library(tmp_path / "lib")


def test_spectral_scores_by_hand():
    """A library of two orthogonal modules in R^8: an input in module 0's row space has
    energy 1 there and 0 in module 1; chance calibration divides by √(r/n)."""
    Q, _ = torch.linalg.qr(torch.randn(8, 6, generator=torch.Generator().manual_seed(0)))
    library = Library()
    for k, (a, b) in enumerate([(0, 2), (2, 6)]):
        delta = eigenmix.modules.LowRankDelta(torch.randn(5, b - a), Q[:, a:b].T.contiguous())
        library.add(eigenmix.modules.Module(f"m{k}", {"lin": delta}))
    view = library.view("lin")
    x = (Q[:, 0] * 3.0).reshape(1, 1, 8)
    from eigenmix.compose.routers import module_energy

    torch.testing.assert_close(module_energy(x, view), torch.tensor([[[1.0, 0.0]]]), atol=1e-6, rtol=0)
    scores = SpectralRouter(calibration="chance").scores("lin", x, view, eigenmix.compose.Batch())
    torch.testing.assert_close(scores, torch.tensor([[[1 / math.sqrt(2 / 8), 0.0]]]), atol=1e-5, rtol=0)
    g = SpectralRouter(calibration="chance", temperature=0.1).coefficients("lin", x, view, eigenmix.compose.Batch())
    assert g[0, 0, 0] > 0.999


def test_pooling_uses_only_real_tokens():
    x = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(pooled(x, torch.tensor([[1, 1, 0]])), torch.tensor([[[2.0, 2.0]]]))


def test_learned_gate_routes_separable_rows():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 6, generator=g) * 3
    labels = torch.arange(60) % 3
    features = centers[labels] + torch.randn(60, 6, generator=g) * 0.3
    gate = fit_gate(features, labels, 3)
    assert isinstance(gate, Gate) and bool((gate.logits(features).argmax(-1) == labels).all())
    assert torch.equal(fit_gate(features, labels, 3).weight, gate.weight)  # deterministic


def test_learned_router_decides_once_at_the_first_layer(adapters):
    library, x = library_of(adapters), inputs()
    K, D = len(library), sum(V.shape[1] for V in library.view(library.layers[0]).V)
    gate = Gate(torch.zeros(K, D), torch.tensor([0.0, 5.0, 0.0]), torch.zeros(D), torch.ones(D))
    model = routed(library, LearnedRouter(gate, top_k=1))
    with torch.no_grad():
        got = model(x)
        alone = PeftModel.from_pretrained(base_model(), str(adapters[1])).eval()(x)
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.routing(), torch.tensor([[0.0, 1.0, 0.0]]).expand(len(x), 3))


def reference_update(x, library, layer, g):
    """Σ_k g_k ΔW_k x with the dense deltas (the independent computation)."""
    view = library.view(layer)
    return sum(g[..., j : j + 1] * (x @ library.delta(library.names[i], layer).T) for j, i in enumerate(view.members))


@given(
    rows=st.integers(1, 6), tokens=st.integers(1, 4), per_token=st.booleans(),
    sparsity=st.sampled_from(["dense", "top1", "none"]), seed=st.integers(0, 10_000), equal=st.booleans(),
    rank=st.integers(1, 5),
)  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_routed_update_equals_the_dense_sum_on_every_path(rows, tokens, per_token, sparsity, seed, equal, rank):
    """Stacked factors (soft mixing), batched per-row modules (top-1 of equal ranks),
    per-module rows (the rest) and the modules' matrices (ranks up to full, where the factors
    cost more) all equal the dense ``Σ g_k ΔW_k x``; unused modules add nothing."""
    from eigenmix.compose import routed_update

    gen = torch.Generator().manual_seed(seed)
    library = Library()
    for k in range(3):
        r = rank if equal else min(rank + k, 5)
        delta = eigenmix.modules.LowRankDelta(torch.randn(7, r, generator=gen), torch.randn(r, 5, generator=gen))
        library.add(eigenmix.modules.Module(f"m{k}", {"lin": delta}))
    x = torch.randn(rows, tokens, 5, generator=gen)
    g = torch.rand(rows, tokens if per_token else 1, 3, generator=gen)
    if sparsity == "top1":
        g = torch.zeros_like(g).scatter(-1, g.argmax(-1, keepdim=True), 1.0)
    elif sparsity == "none":
        g = torch.zeros_like(g)
    expected = reference_update(x, library, "lin", g) if sparsity != "none" else torch.zeros(rows, tokens, 7)
    torch.testing.assert_close(routed_update(x, library.view("lin"), g), expected, atol=1e-5, rtol=1e-5)
    out = torch.ones(rows, tokens, 7)
    torch.testing.assert_close(routed_update(x, library.view("lin"), g, out=out), expected + 1.0, atol=1e-5, rtol=1e-5)


def test_scope_all_decides_from_every_layers_scores(adapters):
    """Two passes: the spectral scores of every layer on the base model, averaged per module,
    then one mix for all layers — the same output as those coefficients given per row."""
    from eigenmix.compose.hooks import on_input

    library, x = library_of(adapters), inputs()
    router = SpectralRouter(scope="all", temperature=0.5)
    base = base_model().eval()
    seen = {}
    hooks = [
        on_input(base, layer, library.view(layer).shape, lambda x, layer=layer: seen.__setitem__(layer, x)) for layer in library.layers
    ]
    with torch.no_grad():
        base(x)
    for h in hooks:
        h.remove()
    scores = torch.stack(
        [
            router.scores(layer, seen[layer].reshape(len(x), 1, -1), library.view(layer), eigenmix.compose.Batch())
            for layer in library.layers
        ]
    ).mean(0)
    expected_g = torch.softmax(scores / 0.5, -1)[:, 0]  # (rows, K)
    with torch.no_grad():
        got = routed(library, router)(x)
        expected = routed(library, GivenRouter())(x, given=expected_g)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_calibration_statistics_by_hand_and_without_side_effects(adapters):
    """calibrate: each module's own mean/std of its score on its own rows; stream_statistics:
    every module's over all rows; neither changes the model's outputs."""
    from eigenmix.compose.hooks import on_input
    from eigenmix.compose.router_stats import calibrate, stream_statistics
    from eigenmix.compose.routers import module_energy

    library = library_of(adapters)
    model = base_model().eval()
    rows = {name: {"x": inputs(n=6 + k)} for k, name in enumerate(library.names)}
    with torch.no_grad():
        before = model(rows[library.names[0]]["x"])
        own = calibrate(model, library, rows)
        stream = stream_statistics(model, library, list(rows.values()))
        after = model(rows[library.names[0]]["x"])
    assert torch.equal(before, after)
    layer = library.layers[0]
    seen = {}
    hook = on_input(model, layer, library.view(layer).shape, lambda x: seen.__setitem__("x", x))
    all_scores = []
    for k, name in enumerate(library.names):
        with torch.no_grad():
            model(**rows[name])
        s = module_energy(seen["x"].reshape(seen["x"].shape[0], 1, -1), library.view(layer))[:, 0].double()
        torch.testing.assert_close(own[layer][0][k].double(), s[:, k].mean(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(own[layer][1][k].double(), s[:, k].std(unbiased=False), atol=1e-6, rtol=1e-6)
        all_scores.append(s)
    hook.remove()
    s = torch.cat(all_scores)
    torch.testing.assert_close(stream[layer][0].double(), s.mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stream[layer][1].double(), s.std(0, unbiased=False), atol=1e-6, rtol=1e-6)


def test_the_gate_is_fitted_where_the_model_decides(adapters):
    """Layers stored alphabetically still route once at the layer the model runs first."""
    from eigenmix.compose.hooks import first_routed_layer
    from eigenmix.compose.routers.learned import gate_from_rows

    library = library_of(adapters)
    model = base_model().eval()
    first = first_routed_layer(model, library.layers)
    assert first == next(name for name, _ in model.named_modules() if name in library.layers)
    g = torch.Generator().manual_seed(0)
    n = library.view(first).shape[1]
    rows = {name: torch.randn(10, n, generator=g) + 4 * k for k, name in enumerate(library.names)}
    gate = gate_from_rows(library, [first], {name: {first: r} for name, r in rows.items()})
    view = library.view(first)
    for k, name in enumerate(library.names):
        features = torch.cat([rows[name] @ V for V in view.V], -1)
        assert bool((gate.logits(features).argmax(-1) == k).all())


def test_replacing_an_entry_keeps_its_place(adapters):
    import dataclasses

    library = library_of(adapters)
    entry = library.entry(library.names[0])
    library.replace(dataclasses.replace(entry, stats={"lin.mean": torch.tensor(1.0)}))
    assert library.names[0] == entry.name and "lin.mean" in library.entry(entry.name).stats


def test_a_sequence_score_is_the_mean_of_its_real_tokens_scores():
    from eigenmix.compose.routers import module_energy
    from eigenmix.compose.routers.spectral import sequence_scores

    gen = torch.Generator().manual_seed(1)
    library = Library()
    for k in range(2):
        library.add(
            eigenmix.modules.Module(
                f"m{k}", {"lin": eigenmix.modules.LowRankDelta(torch.randn(4, 2, generator=gen), torch.randn(2, 6, generator=gen))}
            )
        )
    x, mask = torch.randn(2, 3, 6, generator=gen), torch.tensor([[1, 1, 0], [1, 1, 1]])
    view = library.view("lin")
    tokens = module_energy(x, view)
    expected = torch.stack([tokens[0, :2].mean(0), tokens[1].mean(0)]).unsqueeze(1)
    torch.testing.assert_close(sequence_scores(x, view, mask), expected)


def test_a_gate_of_every_layer_decides_in_a_first_pass(adapters):
    """A gate that reads every routed layer decides once, from the base model's first pass:
    with a bias for module 1 and top-1, the output is that adapter's alone."""
    from eigenmix.compose.routers import gate_features

    library, x = library_of(adapters), inputs()
    features, labels = gate_features(base_model().eval(), library, {name: {"x": inputs(n=4)} for name in library.names}, library.layers)
    F = sum(sum(V.shape[1] for V in library.view(layer).V) for layer in library.layers)
    assert features.shape == (12, F) and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    gate = Gate(torch.zeros(3, F), torch.tensor([0.0, 5.0, 0.0]), torch.zeros(F), torch.ones(F), tuple(library.layers))
    model = routed(library, LearnedRouter(gate, top_k=1))
    assert model.router.scope == "all"
    with torch.no_grad():
        got = model(x)
        alone = PeftModel.from_pretrained(base_model(), str(adapters[1])).eval()(x)
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
