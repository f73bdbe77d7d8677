"""Exact and randomized truncated SVD, and rank selection by energy."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eigenmix.spectral import energy_profile, randomized_svd, rank_for_energy, retained_energy, svd, truncated_svd


def decaying_matrix(m: int, n: int, decay: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``(m, n)`` matrix with singular values ``decay**i`` and those values."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    S = decay ** torch.arange(k, dtype=torch.float64)
    return (U * S) @ V.T, S


@given(st.integers(2, 40), st.integers(2, 40), st.integers(1, 40), st.integers(0, 1000))
def test_exact_truncated_svd_keeps_the_leading_triplets(m, n, k, seed):
    W = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    f = truncated_svd(W, k)
    full = torch.linalg.svdvals(W)
    kk = min(k, m, n)
    assert f.S.shape == (kk,)
    assert torch.allclose(f.S, full[:kk], rtol=1e-10)
    if kk == min(m, n):
        assert torch.allclose(f.dense(), W, atol=1e-10)


# Stated tolerance: for spectra decaying by 0.8 per index (and faster), 4 power
# iterations and 10 oversamples give the top-k values within 1e-4 relative.
@given(st.integers(60, 200), st.integers(60, 200), st.integers(1, 20), st.sampled_from([0.5, 0.7, 0.8]), st.integers(0, 99))
def test_randomized_svd_reaches_exact_top_k(m, n, k, decay, seed):
    W, S = decaying_matrix(m, n, decay, seed)
    f = randomized_svd(W, k, seed=seed)
    assert f.S.shape == (k,)
    rel = ((f.S - S[:k]).abs() / S[:k]).max()
    assert rel < 1e-4, float(rel)


def test_randomized_svd_float32_large_matrix():
    W, S = decaying_matrix(1000, 800, 0.9, 3)
    f = randomized_svd(W.float(), 16)
    rel = ((f.S.double() - S[:16]).abs() / S[:16]).max()
    assert rel < 1e-3


def test_randomized_svd_is_seeded_and_leaves_global_rng_alone():
    W, _ = decaying_matrix(80, 60, 0.8, 0)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = randomized_svd(W, 5, seed=7)
    after = torch.rand(3)
    b = randomized_svd(W, 5, seed=7)
    assert torch.equal(before, after)
    assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S)


def test_svd_dispatch_uses_randomized_only_for_small_k():
    W, S = decaying_matrix(300, 300, 0.7, 1)
    assert torch.allclose(svd(W, 5).S, S[:5], rtol=1e-6)
    assert svd(W).S.shape == (300,)


def test_rank_for_energy_examples():
    S = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(S, 9 / 14) == 1
    assert rank_for_energy(S, 0.65) == 2
    assert rank_for_energy(S, 0.9) == 2
    assert rank_for_energy(S, 0.99) == 3
    assert rank_for_energy(S, 1.0) == 3
    assert rank_for_energy(torch.zeros(3), 0.9) == 0
    assert retained_energy(S, 1) == pytest.approx(9 / 14)
    assert retained_energy(S, 3) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        rank_for_energy(S, 0.0)


@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=30), st.floats(0.01, 1.0))
def test_rank_for_energy_is_minimal(values, energy):
    S = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
    k = rank_for_energy(S, energy)
    if float(S.square().sum()) == 0:
        assert k == 0
        return
    profile = energy_profile(S)
    assert profile[k - 1] >= energy - 1e-9
    if k > 1:
        assert profile[k - 2] < energy
