"""How much modules overlap (``eigenmix.inspect``): per layer against the dense definition, and
the mean over pairs against the per-pair rows it averages."""

from __future__ import annotations

import itertools

import pytest
import torch

from eigenmix.inspect import mean_overlap, module_overlap
from eigenmix.modules import LowRankDelta, Module


def _module(name: str, seed: int, shared: torch.Tensor | None = None) -> Module:
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for layer, (m, n) in {"q": (12, 10), "up": (20, 12)}.items():
        B, A = torch.randn(m, 3, generator=g, dtype=torch.float64), torch.randn(3, n, generator=g, dtype=torch.float64)
        if shared is not None and layer == "q":
            A[0] = shared  # one row direction in common with the other module
        layers[layer] = LowRankDelta(B, A)
    return Module(name, layers)


def test_the_overlap_of_a_layer_is_the_mean_squared_cosine_of_its_principal_angles():
    common = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    a, b = _module("a", 1, common), _module("b", 2, common)
    rows = {r.layer: r for r in module_overlap(a, b)}
    for layer in ("q", "up"):
        Qa = torch.linalg.svd(a.layers[layer].dense().T).U[:, :3]  # the rank-3 row spaces, densely
        Qb = torch.linalg.svd(b.layers[layer].dense().T).U[:, :3]
        cosines = torch.linalg.svdvals(Qa.T @ Qb)
        assert rows[layer].row_overlap == pytest.approx(float(cosines.square().mean()), abs=1e-9)
    assert rows["q"].min_row_angle == pytest.approx(0.0, abs=1e-3)  # the shared direction


def test_the_mean_overlap_averages_every_pair_and_layer():
    modules = [_module(n, s) for n, s in (("a", 1), ("b", 2), ("c", 3))]
    mean = mean_overlap(modules)
    rows = [r for x, y in itertools.combinations(modules, 2) for r in module_overlap(x, y)]
    assert mean["pairs"] == 3 and mean["layers"] == len(rows) == 6
    for field in ("column_overlap", "row_overlap", "min_column_angle", "min_row_angle", "chance_row"):
        assert mean[field] == pytest.approx(sum(getattr(r, field) for r in rows) / len(rows), rel=1e-12)
    assert mean_overlap(modules[:1]) == {"pairs": 0}
