"""Factored SVD of B @ A against the dense SVD of the formed product."""

from __future__ import annotations

import torch
from hypothesis import given

from eigenmix.spectral import factored_svd
from strategies import lowrank_factors


@given(lowrank_factors())
def test_singular_values_match_dense_svd_float64(factors):
    B, A = factors
    f = factored_svd(B, A)
    dense = torch.linalg.svdvals(B @ A)
    k = f.S.numel()
    assert k == min(B.shape[0], A.shape[1], B.shape[1])
    scale = max(float(dense[0]), 1e-300)
    # relative to the largest singular value: small ones of a deficient product are roundoff
    assert torch.allclose(f.S, dense[:k], rtol=1e-6, atol=1e-10 * scale)


@given(lowrank_factors(dtype=torch.float32))
def test_reconstruction_float32(factors):
    B, A = factors
    f = factored_svd(B, A)
    assert f.U.dtype == torch.float32
    product = B @ A
    err = (f.dense() - product).abs().max()
    assert err <= 1e-5 * max(1.0, float(product.abs().max()))


@given(lowrank_factors())
def test_factors_are_orthonormal(factors):
    B, A = factors
    f = factored_svd(B, A)
    k = f.S.numel()
    eye = torch.eye(k, dtype=torch.float64)
    assert torch.allclose(f.U.T @ f.U, eye, atol=1e-10)
    assert torch.allclose(f.V.T @ f.V, eye, atol=1e-10)
    assert bool((f.S[:-1] >= f.S[1:]).all()) and bool((f.S >= 0).all())


def test_zero_product_has_zero_spectrum():
    f = factored_svd(torch.zeros(7, 3), torch.randn(3, 5))
    assert torch.equal(f.S, torch.zeros(3))
    assert torch.equal(f.dense(), torch.zeros(7, 5))


def test_rejects_mismatched_factors():
    try:
        factored_svd(torch.randn(4, 3), torch.randn(2, 5))
    except ValueError as err:
        assert "(m, r)" in str(err)
    else:
        raise AssertionError("mismatched factors were accepted")
