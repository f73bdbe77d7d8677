"""explain/: attributions checked against an independent dense computation on a tiny model
(ΔW and every rank-one piece formed explicitly), shares that add up, λ recovered from
merges, the residual of merges that are no reweighting, and routed libraries."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from common import base_model, raw_adapter
from eigenmix import merge
from eigenmix.compose import Library, RoutedModel
from eigenmix.compose.routers import SpectralRouter, UniformRouter
from eigenmix.errors import InvalidInputError
from eigenmix.explain import Explanation, LayerDirections, Recorder, Row, fit_coefficients, from_library, from_merge
from eigenmix.io import read_lora_adapter
from eigenmix.modules import DenseDelta

SHAPES = {"encoder.q": (10, 12), "encoder.v": (10, 12), "encoder.out": (8, 10)}


@pytest.fixture
def modules(tmp_path):
    out = []
    for k, name in enumerate(("a", "b", "c")):
        shapes = SHAPES if name != "c" else {"encoder.q": (10, 12), "encoder.out": (8, 10)}  # c lacks a layer
        out.append(read_lora_adapter(raw_adapter(tmp_path / name, shapes, r=3, seed=k), name=name))
    return out


def library_of(modules) -> Library:
    lib = Library()
    for m in modules:
        lib.add(m)
    return lib


def run(model, directions, parts, x, *, apply=True, gate=None, runner=None):
    """Record ``x`` ``(rows, tokens, 12)`` through the tiny model; the Explanation and outputs."""
    rec = Recorder(model, directions, parts, x.shape[0], apply=apply, gate=gate)
    try:
        out = rec.run(runner or model, {"x": x}, range(x.shape[0]))
    finally:
        rec.close()
    layers = tuple(name for name, _ in model.named_modules() if name in directions)
    rows = tuple(Row(i + 1, "", None, tuple(str(t) for t in range(x.shape[1]))) for i in range(x.shape[0]))
    names = tuple(f"p{k}" for k in range(parts))
    return Explanation("tiny", "test", names, layers, directions, rec.tallies, rec.tokens, rows), out


def layer_inputs(model, layers, x, deltas):
    """Each layer's input on the model with ``W0 + ΔW`` (dense, by plain hooks)."""
    seen, hooks = {}, []
    for layer in layers:
        lin = model.get_submodule(layer)

        def hook(mod, inp, out, layer=layer):
            seen[layer] = inp[0]
            return out + inp[0] @ deltas[layer].T.to(out.dtype)

        hooks.append(lin.register_forward_hook(hook))
    out = model(x)
    for h in hooks:
        h.remove()
    return seen, out


def dense_shares(pieces, x):
    """Per row: each piece's share ``Σ_t ⟨y_k, y⟩ / Σ_t ‖y‖²`` from dense matrices ``pieces`` (k → (m, n))."""
    ys = {k: x.double() @ W.T for k, W in pieces.items()}  # (rows, tokens, m)
    y = sum(ys.values())
    energy = y.square().sum((1, 2))
    return {k: (yk * y).sum((1, 2)) / energy for k, yk in ys.items()}


def test_shares_equal_a_dense_computation_and_add_up(modules):
    torch.manual_seed(0)
    model, lib = base_model().double(), library_of(modules)
    directions = from_library(lib)
    x = torch.randn(5, 7, 12, dtype=torch.float64)
    ex, out = run(model, directions, 3, x)
    dense = {layer: d.dense() for layer, d in directions.items()}
    inputs, reference = layer_inputs(base_model().double(), list(directions), x, dense)
    torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9)  # the recorder adds exactly ΔW x
    per_row = ex.row_layer_shares()  # (rows, L, P)
    for i, layer in enumerate(ex.layers):
        modules_at = {k: lib.delta(name, layer).double() for k, name in enumerate(lib.names) if layer in lib.entry(name).layers}
        expect = dense_shares(modules_at, inputs[layer])
        for k, s in expect.items():
            torch.testing.assert_close(per_row[:, i, k], s, rtol=0, atol=1e-6)
        d = directions[layer]  # every rank-one piece w_d u_d v_dᵀ formed explicitly
        pieces = {j: d.weight[j] * torch.outer(d.U[:, j], d.V[:, j]) for j in range(d.U.shape[1])}
        expect_d = dense_shares(pieces, inputs[layer])
        t = ex.tallies[layer]
        energy = t.directions.sum(1)
        for j, s in expect_d.items():
            torch.testing.assert_close(t.directions[:, j] / energy, s, rtol=0, atol=1e-6)
    torch.testing.assert_close(per_row.sum(-1), torch.ones_like(per_row.sum(-1)), rtol=0, atol=1e-6)
    torch.testing.assert_close(ex.layer_shares().sum(-1), torch.ones(len(ex.layers), dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(ex.row_shares().sum(-1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(ex.token_shares(2).sum(-1), torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-6)


def test_own_plus_cross_is_the_share_and_cross_terms_are_the_overlap(modules):
    model, lib = base_model().double(), library_of(modules)
    directions = from_library(lib)
    x = torch.randn(4, 3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ex, _ = run(model, directions, 3, x)
    M = ex.layer_matrix()  # (L, P, P)
    torch.testing.assert_close(M, M.transpose(1, 2))
    inputs, _ = layer_inputs(base_model().double(), list(directions), x, {layer: d.dense() for layer, d in directions.items()})
    layer = "encoder.q"
    i = ex.layers.index(layer)
    ya, yb = (inputs[layer].double() @ lib.delta(n, layer).double().T for n in ("a", "b"))
    total = sum(inputs[layer].double() @ lib.delta(n, layer).double().T for n in lib.names).square().sum()
    assert float(M[i, 0, 1]) == pytest.approx(float((ya * yb).sum() / total), abs=1e-7)
    assert float(M[i, 0, 0]) == pytest.approx(float(ya.square().sum() / total), abs=1e-7)
    # within one module the output directions are orthonormal: no cross term among its directions
    d = directions[layer]
    own = d.U[:, d.owner == 0]
    torch.testing.assert_close(own.T @ own, torch.eye(own.shape[1], dtype=torch.float64), rtol=0, atol=1e-6)  # float32 storage


def test_merges_that_reweight_directions_have_their_lambda_recovered_and_no_residual(modules):
    lib = library_of(modules)
    merged = merge(modules, "task_arithmetic", weights=[1.0, 0.5, 2.0], scale=0.7)
    directions = from_merge(merged.layers, lib)
    for d in directions.values():
        assert int(d.owner.max()) < 3  # no residual part
        expect = torch.tensor([0.7 * [1.0, 0.5, 2.0][int(k)] for k in d.owner], dtype=torch.float64)
        torch.testing.assert_close(d.lam, expect, rtol=1e-5, atol=1e-6)


def test_a_merge_that_is_no_reweighting_keeps_its_update_exactly_with_a_residual(modules):
    lib = library_of(modules)
    merged = merge(modules, "ties", density=0.5)
    directions = from_merge(merged.layers, lib)
    for layer, d in directions.items():
        assert bool((d.owner == 3).any()), layer
        W = merged.layers[layer].svd64()
        dense = (W.U * W.S) @ W.V.T
        torch.testing.assert_close(d.dense(), dense, rtol=0, atol=1e-6 * float(dense.abs().max()))


@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 3))
def test_fit_coefficients_recovers_any_reweighting(seed, r, K):
    g = torch.Generator().manual_seed(seed)
    m, n = 9, 7
    U = (
        torch.linalg.qr(torch.randn(m, K * r, generator=g, dtype=torch.float64))[0]
        if K * r <= m
        else torch.randn(m, K * r, generator=g, dtype=torch.float64)
    )
    U = U / U.norm(dim=0)
    V = torch.randn(n, K * r, generator=g, dtype=torch.float64)
    V = V / V.norm(dim=0)
    sigma = torch.rand(K * r, generator=g, dtype=torch.float64) + 0.5
    lam = torch.randn(K * r, generator=g, dtype=torch.float64)
    owner = torch.arange(K).repeat_interleave(r)
    parts = LayerDirections(U, V, sigma, torch.ones_like(sigma), owner, torch.arange(r).repeat(K))
    target = (U * lam * sigma) @ V.T
    fitted = fit_coefficients(DenseDelta(target).svd64(), parts)
    torch.testing.assert_close((U * fitted * sigma) @ V.T, target, rtol=0, atol=1e-9)  # the rank-one pieces are independent here: λ itself
    if K * r <= min(m, n):
        torch.testing.assert_close(fitted, lam, rtol=0, atol=1e-7)


@pytest.mark.parametrize("router", ["uniform", "spectral_all"])
def test_a_routed_library_is_attributed_with_the_routers_coefficients(modules, router):
    from eigenmix.harness.explain_run import routed_gate

    lib = library_of(modules)
    model = base_model().double()
    directions = from_library(lib)
    scored = SpectralRouter("energy", "chance", level="sequence", scope="all", temperature=0.5)  # two passes: the first only scores
    routed = RoutedModel(model, lib, UniformRouter() if router == "uniform" else scored)
    seen: dict[str, torch.Tensor] = {}  # each layer's input in the routed pass (the last call overwrites the scoring pass)
    hooks = [
        model.get_submodule(layer).register_forward_hook(lambda m, inp, o, layer=layer: seen.__setitem__(layer, inp[0]))
        for layer in directions
    ]
    x = torch.randn(3, 4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ex, _ = run(model, directions, 3, x, apply=False, gate=routed_gate(routed, directions), runner=routed)
    for h in hooks:
        h.remove()
    routed.detach_hooks()
    for i, layer in enumerate(ex.layers):  # dense: each module's ΔW times its routed coefficient, on the routed model's inputs
        g = routed.last[layer]  # (rows, 1, K_l)
        ys = {
            k: g[:, :, j : j + 1] * (seen[layer] @ lib.delta(lib.names[k], layer).double().T)
            for j, k in enumerate(routed.views[layer].members)
        }
        y = sum(ys.values())
        for k, yk in ys.items():
            torch.testing.assert_close(ex.row_layer_shares()[:, i, k], (yk * y).sum((1, 2)) / y.square().sum((1, 2)), rtol=0, atol=1e-6)


def test_a_merged_layer_none_of_its_modules_has_is_refused(modules):
    lib = library_of(modules[:1])
    merged = merge(modules, "task_arithmetic")
    with pytest.raises(InvalidInputError, match="none of its modules"):
        from_merge({"encoder.extra": merged.layers["encoder.q"]}, lib)


def test_a_live_composition_at_learned_lambda_and_its_notebook_view(modules):
    from eigenmix.explain import from_composition
    from eigenmix.tune.live import build

    model = base_model()  # float32, as the composition's factors
    comp = build(model, modules, init="spectral")
    with torch.no_grad():
        for p in comp.lam.values():  # as if learned
            p.mul_(torch.linspace(0.5, 1.5, p.numel(), dtype=p.dtype))
    directions = from_composition(comp)
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(3))
    ex, out = run(model, directions, 3, x, apply=False)  # the composition's own hooks add the update
    comp.detach_hooks()
    dense = {layer: d.dense() for layer, d in directions.items()}
    inputs, reference = layer_inputs(base_model(), list(directions), x, dense)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)  # the directions are the composition's update
    for i, layer in enumerate(ex.layers):
        d = directions[layer]
        pieces = {k: (d.U[:, d.owner == k] * d.weight[d.owner == k]) @ d.V[:, d.owner == k].T for k in d.owner.unique().tolist()}
        for k, s in dense_shares(pieces, inputs[layer]).items():
            torch.testing.assert_close(ex.row_layer_shares()[:, i, k], s, rtol=0, atol=1e-6)
    page = ex._repr_html_()
    assert page.count("<img") >= 8 and "Which part changes each layer" in page
