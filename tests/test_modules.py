"""Conversions between the delta forms, checked against dense references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eigenmix.modules import DenseDelta, LowRankDelta, Module, SpectralDelta
from strategies import lowrank_factors


@given(lowrank_factors(), st.floats(-3, 3).filter(lambda s: abs(s) > 1e-3))
def test_lowrank_to_spectral_to_lowrank_is_exact(factors, scale):
    B, A = factors
    low = LowRankDelta(B, A, scale)
    ref = scale * (B @ A)
    spec = low.spectral()
    assert isinstance(spec, SpectralDelta)
    assert bool((spec.S >= 0).all())
    tol = 1e-9 * max(1.0, float(ref.abs().max()))
    assert torch.allclose(spec.dense(), ref, atol=tol)
    back = spec.lowrank()
    assert back.scale == 1.0 and torch.allclose(back.dense(), ref, atol=tol)


def test_balanced_factors_share_the_spectrum():
    g = torch.Generator().manual_seed(0)
    spec = LowRankDelta(torch.randn(9, 3, generator=g), torch.randn(3, 7, generator=g), 2.0).spectral()
    low = spec.lowrank()
    assert torch.allclose(torch.linalg.norm(low.B, dim=0), torch.linalg.norm(low.A, dim=1), atol=1e-5)


def test_dense_to_spectral_by_rank_and_energy():
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(30, 5, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(20, 5, generator=g, dtype=torch.float64))
    S = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    W = (U * S) @ V.T
    dense = DenseDelta(W)
    full = dense.spectral()
    assert torch.allclose(full.S[:5], S) and torch.allclose(full.dense(), W, atol=1e-12)
    assert dense.spectral(2).rank == 2
    by_energy = dense.spectral(energy=0.99)  # 16+4+1 = 21 of 21.26 = 0.988 -> needs 4
    assert by_energy.rank == 4
    assert torch.allclose(dense.lowrank(5).dense(), W, atol=1e-12)


def test_dense_non_matrix_has_no_spectrum():
    with pytest.raises(ValueError, match="only a matrix"):
        DenseDelta(torch.zeros(4)).spectral()


def test_module_spectral_keeps_vectors_dense_and_counts_parameters():
    g = torch.Generator().manual_seed(0)
    layers = {
        "a": LowRankDelta(torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g), 0.5),
        "a.bias": DenseDelta(torch.randn(6, generator=g)),
        "b": DenseDelta(torch.randn(4, 3, generator=g)),
    }
    module = Module("m", layers)
    assert not module.is_lowrank and module.n_parameters() == 6 * 2 + 2 * 5 + 6 + 12
    spec = module.spectral()
    assert isinstance(spec.layers["a"], SpectralDelta) and isinstance(spec.layers["a.bias"], DenseDelta)
    for name in layers:
        assert torch.allclose(spec.layers[name].dense(), layers[name].dense(), atol=1e-5)


def test_lowrank_rejects_bad_shapes():
    with pytest.raises(ValueError, match="LowRankDelta needs"):
        LowRankDelta(torch.zeros(3, 2), torch.zeros(3, 4))
