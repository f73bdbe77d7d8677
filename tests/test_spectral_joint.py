"""The joint-basis engine against the QR oracle (tests/joint_reference.py) and dense
products; principal angles."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eigenmix.spectral import decompose, gram_range, principal_angles, range_overlap, subspace_overlap
from joint_reference import joint_basis, module_spectra, orthonormal_range
from strategies import module_family


def engine(factors, rtol=1e-10):
    """The engine on ``(B, A)`` pairs: factors ``(B, Aᵀ)``, unit weights."""
    return decompose([(B, A.T) for B, A in factors], [1.0] * len(factors), rtol)


@given(module_family())
def test_engine_reconstruction_is_exact(factors):
    layer = engine(factors)
    Q_U, Q_V = layer.basis
    for i, (B, A) in enumerate(factors):
        dense = B @ A
        assert torch.allclose(Q_U @ layer.core(i) @ Q_V.T, dense, atol=1e-9 * max(1.0, float(dense.abs().max())))


@given(module_family())
def test_engine_basis_is_orthonormal_and_spans_what_the_oracle_spans(factors):
    """The engine spans the stacked factors (``[B_1 … B_K]``, ``[A_1; …; A_K]``), which hold
    the deltas' column and row spaces, the oracle's basis; the two are equal when the
    factors have full rank (as trained LoRA factors do)."""
    layer = engine(factors)
    Q_U, Q_V = layer.basis
    R_U, R_V = layer.rank
    assert torch.allclose(Q_U.T @ Q_U, torch.eye(R_U, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(Q_V.T @ Q_V, torch.eye(R_V, dtype=torch.float64), atol=1e-10)
    assert R_U == int(torch.linalg.matrix_rank(torch.cat([B for B, _ in factors], dim=1)))
    assert R_V == int(torch.linalg.matrix_rank(torch.cat([A for _, A in factors], dim=0)))
    oracle = joint_basis(module_spectra(factors), rtol=1e-10)
    assert torch.allclose(Q_U @ (Q_U.T @ oracle.Q_U), oracle.Q_U, atol=1e-8)
    assert torch.allclose(Q_V @ (Q_V.T @ oracle.Q_V), oracle.Q_V, atol=1e-8)
    if all(int(torch.linalg.matrix_rank(B)) == int(torch.linalg.matrix_rank(A)) == B.shape[1] for B, A in factors):
        assert layer.rank == oracle.rank


def test_shared_directions_are_dropped_once():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(20, 3, generator=g, dtype=torch.float64)
    A = torch.randn(3, 15, generator=g, dtype=torch.float64)
    layer = decompose([(B, A.T), (2 * B, A.T), (B, -A.T)], [1.0, 1.0, 1.0], 10 * torch.finfo(torch.float64).eps)
    assert layer.rank == (3, 3)
    assert joint_basis(module_spectra([(B, A), (2 * B, A), (B, -A)])).rank == (3, 3)


@given(module_family())
def test_lifted_sum_has_the_spectrum_of_the_summed_delta(factors):
    merged = engine(factors).lift(engine(factors).weighted_sum())
    dense = sum(B @ A for B, A in factors)
    ref = torch.linalg.svdvals(dense)
    k = merged.S.numel()
    assert torch.allclose(merged.S, ref[:k], atol=1e-9 * max(1.0, float(ref[0])))
    assert torch.allclose(merged.dense(), dense, atol=1e-9 * max(1.0, float(dense.abs().max())))


def test_principal_angles_known_example():
    e = torch.eye(4, dtype=torch.float64)
    theta = 0.3
    Q1 = e[:, :2]
    Q2 = torch.stack([e[:, 0], math.cos(theta) * e[:, 1] + math.sin(theta) * e[:, 2]], dim=1)
    angles = principal_angles(Q1, Q2)
    assert torch.allclose(angles, torch.tensor([0.0, theta], dtype=torch.float64), atol=1e-12)
    assert subspace_overlap(Q1, Q2) == pytest.approx((1 + math.cos(theta) ** 2) / 2, abs=1e-12)
    assert subspace_overlap(e[:, :2], e[:, 2:]) == 0.0


def test_small_angles_are_accurate():
    e = torch.eye(3, dtype=torch.float64)
    theta = 1e-9  # arccos of the cosine would give ~2e-8 or 0
    q = (math.cos(theta) * e[:, 0] + math.sin(theta) * e[:, 1]).unsqueeze(1)
    assert abs(float(principal_angles(e[:, :1], q)[0]) - theta) < 1e-15


@given(st.integers(3, 30), st.integers(1, 5), st.integers(1, 5), st.integers(0, 999))
def test_principal_angles_match_the_cosine_definition(m, p, q, seed):
    g = torch.Generator().manual_seed(seed)
    Q1, _ = torch.linalg.qr(torch.randn(m, min(p, m), generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(m, min(q, m), generator=g, dtype=torch.float64))
    angles = principal_angles(Q1, Q2)
    cos = torch.linalg.svdvals(Q1.T @ Q2).clamp(0, 1)
    assert torch.allclose(torch.cos(angles), cos, atol=1e-7)
    assert bool((angles[1:] >= angles[:-1] - 1e-12).all())
    assert abs(subspace_overlap(Q1, Q2) - float(cos.square().mean())) < 1e-10


def test_range_overlap_ignores_scale_and_rank_deficiency():
    g = torch.Generator().manual_seed(1)
    M = torch.randn(10, 3, generator=g, dtype=torch.float64)
    assert abs(range_overlap(M, 5 * torch.cat([M, M[:, :1]], dim=1)) - 1.0) < 1e-12


@given(st.integers(2, 12), st.integers(1, 4), st.integers(0, 2**16))
def test_gram_range_of_a_wide_stack_is_the_range_of_its_rows(m, times, seed):
    """More factors than rows (full-rank modules stacked): a basis of the range (the whole
    space when the rank is full), orthonormal, and coordinates that reproduce the stack."""
    g = torch.Generator().manual_seed(seed)
    rank = max(1, m - seed % 3)
    X = torch.randn(m, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, m * times + 1, generator=g, dtype=torch.float64)
    M, C = gram_range(X, 1e-6)
    Q = X @ M
    Q_ref = orthonormal_range(X / torch.linalg.vector_norm(X, dim=0), 1e-6)
    assert Q.shape[1] == Q_ref.shape[1] == rank
    assert torch.allclose(Q.T @ Q, torch.eye(rank, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(Q @ Q.T, Q_ref @ Q_ref.T, atol=1e-8)
    assert torch.allclose(Q @ C, X, atol=1e-9 * float(X.abs().max()))


@given(module_family(), st.floats(1e-6, 1e3))
def test_gram_range_spans_the_same_space_as_the_qr_range(factors, magnitude):
    """The fast Gram-matrix basis equals the QR-based one: same span, orthonormal, and the
    coordinates it returns reproduce the stacked factors, whatever their magnitude."""
    X = torch.cat([B * magnitude**i for i, (B, _) in enumerate(factors)], dim=1)
    M, C = gram_range(X, 1e-6)
    Q = X @ M
    Q_ref = orthonormal_range(X / torch.linalg.vector_norm(X, dim=0), 1e-6)
    assert Q.shape[1] == Q_ref.shape[1]
    assert torch.allclose(Q.T @ Q, torch.eye(Q.shape[1], dtype=torch.float64), atol=1e-10)
    assert torch.allclose(Q @ Q.T, Q_ref @ Q_ref.T, atol=1e-8)
    assert torch.allclose(Q @ C, X, atol=1e-9 * float(X.abs().max()))
