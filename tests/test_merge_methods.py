"""Every merge method against an independent dense reference (tests/dense_reference.py),
the factored path against the dense path, and the structural properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import eigenmix
from dense_reference import (
    dare_linear,
    dare_ties,
    iso_c,
    iso_cts,
    knots_ties,
    linear,
    magnitude_prune,
    spectral,
    star,
    ties,
    trim_global,
    tsv,
)
from eigenmix.merging import Grams, all_methods, get_method, iter_merge, register
from eigenmix.merging.elementwise import dare_linear_merge, dare_ties_merge
from eigenmix.merging.registry import MergeParams
from eigenmix.modules import DenseDelta, LowRankDelta, Module

SPECTRAL = [m.name for m in all_methods() if m.kind == "spectral"]


def family(seed: int, k: int = 3, m: int = 24, n: int = 18, r: int = 3, shared: bool = True) -> list[Module]:
    """K float64 LoRA-like modules of one layer; with ``shared`` they share a direction."""
    g = torch.Generator().manual_seed(seed)
    mods = []
    for i in range(k):
        B = torch.randn(m, r, generator=g, dtype=torch.float64)
        A = torch.randn(r, n, generator=g, dtype=torch.float64)
        if shared and i > 0:
            B[:, 0] = mods[0].layers["layer"].B[:, 0] * (1 + i)
            A[0] = mods[0].layers["layer"].A[0]
        mods.append(Module(f"m{i}", {"layer": LowRankDelta(B, A, 0.5 + 0.25 * i)}))
    return mods


def dense(mods: list[Module]) -> list[torch.Tensor]:
    return [m.layers["layer"].dense() for m in mods]


def calibration(method: str, mods: list[Module]) -> dict:
    """Fixed input Grams of the one layer for a calibrated method (none for the others)."""
    kind = get_method(method).calibration
    if kind is None:
        return {}
    g = torch.Generator().manual_seed(99)
    n = mods[0].layers["layer"].shape[1]
    grams = [{"layer": (X := torch.randn(2 * n, n, generator=g, dtype=torch.float64)).T @ X} for _ in mods]
    return {"calibration": Grams(grams, kind=kind)}


def merged(mods, method, **kw) -> torch.Tensor:
    return eigenmix.merge(mods, method, **calibration(method, mods), **kw).layers["layer"].dense()


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-9) -> bool:
    return float((a - b).norm()) <= rel * max(float(b.norm()), 1e-30)


WEIGHTS = [1.0, 0.7, 1.3]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shared", [True, False])
def test_spectral_methods_match_dense_references(seed, shared):
    mods = family(seed, shared=shared)
    Ws = dense(mods)
    d = min(get_basis_rank(mods))
    refs = {
        "linear": (linear(Ws, WEIGHTS, normalize=True), {"normalize": True}),
        "task_arithmetic": (linear(Ws, WEIGHTS, scale=0.3), {}),
        "iso_c": (iso_c(Ws, WEIGHTS, scale=1.5), {"scale": 1.5}),
        "iso_cts": (iso_cts(Ws, WEIGHTS, d, 0.5), {"common_space_fraction": 0.5}),
        "tsv": (tsv(Ws, WEIGHTS), {}),
        "star": (star(Ws, WEIGHTS, eta=0.6), {"eta": 0.6}),
        "knots": (knots_ties(Ws, WEIGHTS, density=0.3, scale=0.6), {"density": 0.3, "scale": 0.6}),
        "spectral": (spectral(Ws, WEIGHTS), {}),
    }
    for name, (ref, params) in refs.items():
        got = merged(mods, name, weights=WEIGHTS, **params)
        assert close(got, ref, 1e-8), name
    assert close(merged(mods, "spectral", weights=WEIGHTS, flatten=0.5), spectral(Ws, WEIGHTS, flatten=0.5), 1e-8)


def get_basis_rank(mods):
    from eigenmix.modules import layer_spectra

    return layer_spectra([m.layers["layer"] for m in mods], [1.0] * len(mods)).basis.rank


@pytest.mark.parametrize("seed", [0, 1])
def test_elementwise_methods_match_dense_references(seed):
    mods = family(seed)
    Ws = dense(mods)
    assert close(merged(mods, "ties", weights=WEIGHTS, density=0.3), ties(Ws, WEIGHTS, 0.3), 1e-12)
    assert close(merged(mods, "ties", weights=WEIGHTS, density=0.3, normalize=False), ties(Ws, WEIGHTS, 0.3, False), 1e-12)
    assert close(merged(mods, "magnitude_prune", weights=WEIGHTS, density=0.4), magnitude_prune(Ws, WEIGHTS, 0.4), 1e-12)
    g = torch.Generator().manual_seed(seed)
    masks = torch.stack([torch.bernoulli(torch.full_like(W, 0.5), generator=g) for W in Ws])
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    stacked = torch.stack(Ws)
    got = dare_linear_merge(stacked, w, masks, density=0.5, rescale="inverse_density")
    assert close(got, dare_linear(Ws, WEIGHTS, masks, 0.5), 1e-12)
    got = dare_ties_merge(stacked, w, masks, density=0.5, rescale="inverse_density", normalize=True)
    assert close(got, dare_ties(Ws, WEIGHTS, masks, 0.5), 1e-12)


@pytest.mark.parametrize("method", SPECTRAL)
@pytest.mark.parametrize("seed", [0, 3])
def test_factored_path_equals_dense_path(method, seed):
    """The same deltas given as LoRA factors or as dense matrices merge to the same delta."""
    mods = family(seed)
    as_dense = [Module(m.name, {"layer": DenseDelta(m.layers["layer"].dense())}) for m in mods]
    a, b = merged(mods, method, weights=WEIGHTS), merged(as_dense, method, weights=WEIGHTS)
    assert close(a, b, 1e-5), method


@pytest.mark.parametrize(("method", "params", "factor"), [("task_arithmetic", {}, 0.3), ("linear", {"scale": 2.0}, 2.0)])
def test_one_module_is_scaled_like_several_on_every_path(method, params, factor):
    """One module merged with λ gives λ × the module, through merge() and iter_merge()
    alike (merge() used to return the module unscaled)."""
    mod = family(0, k=1)[0]
    expected = factor * mod.layers["layer"].dense()
    assert close(eigenmix.merge([mod], method, **params).layers["layer"].dense(), expected, 1e-12)
    [(_, delta, _)] = list(iter_merge([mod], method, **params))
    assert close(delta.dense(), expected, 1e-12)


def test_vectors_follow_each_methods_rule():
    """Biases: the weighted sum (task_arithmetic, plain linear), the mean over modules (tsv,
    iso_c, iso_cts, star), the weighted mean (normalized linear); times the scale."""
    g = torch.Generator().manual_seed(0)
    vectors = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(3)]
    mods = [Module(f"m{i}", {**family(i, k=1)[0].layers, "bias": DenseDelta(v)}) for i, v in enumerate(vectors)]
    total = sum(w * v for w, v in zip(WEIGHTS, vectors, strict=True))
    rules = {
        ("task_arithmetic", ()): 0.3 * total,
        ("linear", ()): total,
        ("linear", (("normalize", True),)): total / sum(WEIGHTS),
        ("spectral", ()): total,
        **{(m, ()): 0.5 * total / 3 for m in ("tsv", "iso_c", "iso_cts", "star")},
    }
    for (method, params), want in rules.items():
        scale = {"scale": 0.5} if method in ("tsv", "iso_c", "iso_cts", "star") else {}
        got = eigenmix.merge(mods, method, weights=WEIGHTS, **dict(params), **scale).layers["bias"].dense()
        assert close(got, want, 1e-12), method


def test_ties_trims_globally_over_every_layer_of_a_module():
    """``trim: global``: one threshold per module over all its tensors (the original code's
    rule), against the dense reference; ``trim: layer`` (the default) is per tensor."""
    g = torch.Generator().manual_seed(3)
    shapes = {"a": (6, 5), "b": (4, 6), "bias": (6,)}
    per_task = [[torch.randn(s, generator=g, dtype=torch.float64) * (1 + i) for s in shapes.values()] for i in range(3)]
    mods = [Module(f"m{i}", {n: DenseDelta(t) for n, t in zip(shapes, ts, strict=True)}) for i, ts in enumerate(per_task)]
    trimmed = trim_global(per_task, 0.3)
    got = eigenmix.merge(mods, "ties", weights=WEIGHTS, density=0.3, trim="global")
    per_layer = eigenmix.merge(mods, "ties", weights=WEIGHTS, density=0.3)
    for j, name in enumerate(shapes):
        ref = ties([t[j] for t in trimmed], WEIGHTS, 0.3, trimmed=True)
        assert close(got.layers[name].dense(), ref, 1e-12), name
        assert close(per_layer.layers[name].dense(), ties([t[j] for t in per_task], WEIGHTS, 0.3), 1e-12), name


@given(st.integers(0, 10_000), st.integers(2, 4))
def test_linear_of_orthogonal_modules_is_their_exact_sum(seed, k):
    g = torch.Generator().manual_seed(seed)
    Q_m, _ = torch.linalg.qr(torch.randn(30, 2 * k, generator=g, dtype=torch.float64))
    Q_n, _ = torch.linalg.qr(torch.randn(20, 2 * k, generator=g, dtype=torch.float64))
    mods = [Module(f"m{i}", {"layer": LowRankDelta(Q_m[:, 2 * i : 2 * i + 2] * 3.0, Q_n[:, 2 * i : 2 * i + 2].T, 0.7)}) for i in range(k)]
    assert close(merged(mods, "linear"), sum(dense(mods)), 1e-12)
    # module-specific directions are kept whole by the spectral rule too
    assert close(merged(mods, "spectral"), sum(dense(mods)), 1e-12)


@pytest.mark.parametrize("method", [m.name for m in all_methods()])
def test_methods_are_bit_identical_on_rerun(method):
    mods = family(5)
    mods32 = [Module(m.name, {"layer": LowRankDelta(m.layers["layer"].B.float(), m.layers["layer"].A.float(), 0.5)}) for m in mods]
    a = eigenmix.merge(mods32, method, seed=11, **calibration(method, mods32)).layers["layer"].dense()
    b = eigenmix.merge(mods32, method, seed=11, **calibration(method, mods32)).layers["layer"].dense()
    assert torch.equal(a, b)


def test_random_methods_depend_on_the_seed():
    mods = family(5)
    assert not torch.equal(merged(mods, "dare", seed=1), merged(mods, "dare", seed=2))


def test_spectral_rule_counts_a_shared_direction_once():
    """Two modules with the same rank-1 delta: the merge equals one of them."""
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(10, 1, generator=g, dtype=torch.float64), torch.randn(1, 8, generator=g, dtype=torch.float64)
    mods = [Module(f"m{i}", {"layer": LowRankDelta(B, A)}) for i in range(2)]
    assert close(merged(mods, "spectral"), B @ A, 1e-12)
    assert close(merged(mods, "linear"), 2 * B @ A, 1e-12)


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register("ties", params=MergeParams, kind="spectral", description="", paper="", url="")(lambda *a: None)
    with pytest.raises(eigenmix.errors.InvalidInputError, match="unknown merge method 'nope'"):
        get_method("nope")
    with pytest.raises(eigenmix.errors.InvalidInputError, match="has no parameter 'densty'"):
        eigenmix.merge(family(0), "ties", densty=0.5)
    with pytest.raises(eigenmix.errors.InvalidInputError, match="parameter 'density'"):
        eigenmix.merge(family(0), "ties", density="lots")


def test_every_method_documents_itself():
    for m in all_methods():
        assert m.description and m.paper and (m.url or m.paper.startswith("eigenmix"))  # eigenmix's own have no paper link
        assert "scale" in m.params.model_fields
