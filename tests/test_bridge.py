"""The bridge's linear algebra against independent computations: the closed-form starts
(scipy's orthogonal Procrustes, CCA's defining properties under hypothesis), the baselines
recovering a known rotation exactly, save → load → apply exact, and bad inputs as one line."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import orthogonal_procrustes

from eigenmix.bridge import BridgeSettings, cca_start, fit_bridge, load_bridge, procrustes_start, retrieval, save_bridge, side_basis
from eigenmix.bridge.baselines import BASELINES
from eigenmix.errors import InvalidInputError


def rotated(n: int = 120, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``X`` with a decaying spectrum, an orthogonal ``Q`` and ``Y = X Q``."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(3, 0.5, d, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return X, X @ Q, Q


def test_procrustes_start_is_scipys_orthogonal_procrustes():
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(50, 7, generator=g, dtype=torch.float64), torch.randn(50, 7, generator=g, dtype=torch.float64)
    start = procrustes_start(A, B)
    R, _ = orthogonal_procrustes(A.numpy(), B.numpy())
    assert torch.allclose(start.P_a @ start.P_b.T, torch.from_numpy(R), atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(20, 60), ka=st.integers(1, 6), kb=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_cca_start_whitens_each_side_and_correlates_pairs_by_their_canonical_correlations(n, ka, kb, seed):
    """With no ridge, the joint coordinates are white on each side, ``(A P_a)ᵀ (A P_a) / n = I``,
    and correlated pair by pair, ``(A P_a)ᵀ (B P_b) / n = diag(ρ)``, ρ in [0, 1], descending."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g, dtype=torch.float64)
    Y = X[:, :5] @ torch.randn(5, 7, generator=g, dtype=torch.float64) + torch.randn(n, 7, generator=g, dtype=torch.float64)
    A, B = side_basis(X, ka).coordinates(X), side_basis(Y, kb).coordinates(Y)
    start = cca_start(A, B, eps=0.0)
    za, zb = A @ start.P_a, B @ start.P_b
    r = min(ka, kb)
    assert torch.allclose(za.T @ za / n, torch.eye(r, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(zb.T @ zb / n, torch.eye(r, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(za.T @ zb / n, torch.diag(start.strength), atol=1e-8)
    assert (start.strength <= 1 + 1e-9).all() and (start.strength[:-1] >= start.strength[1:] - 1e-12).all()


def test_the_bridge_start_recovers_a_known_rotation_exactly():
    X, Y, Q = rotated()
    bx, by = side_basis(X, 12), side_basis(Y, 12)
    start = procrustes_start(bx.coordinates(X), by.coordinates(Y))
    # the map from X's space to Y's: V_x P_a P_bᵀ V_yᵀ
    assert torch.allclose(bx.V @ start.P_a @ start.P_b.T @ by.V.T, Q, atol=1e-10)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_retrieves_a_rotated_copy_exactly(name):
    X, Y, _ = rotated()
    Xq, Yq, _ = rotated(n=40, seed=5)
    Yq = Xq @ rotated()[2]  # held-out queries under the same rotation
    top1, _ = retrieval(BASELINES[name](X, Y, Xq, Yq))
    assert top1 == 1.0


def test_fit_save_load_apply_is_exact(tmp_path):
    X, Y, _ = rotated(n=200, d=16)
    Y = Y + 0.05 * torch.randn(Y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    bridge = fit_bridge(X, Y, BridgeSettings(image_rank=16, text_rank=16))
    assert set(bridge.info["held_out_top1"].values()) == {1.0}
    learned = fit_bridge(X, Y, BridgeSettings(image_rank=16, text_rank=16, learn=True, steps=20, eval_every=5))
    assert learned.info["steps"] >= 5 and retrieval(learned.scores(X, Y))[0] > 0.95
    save_bridge(bridge, tmp_path)
    again = load_bridge(tmp_path)
    assert torch.equal(again.similarity(X[:30], Y[:30]), bridge.similarity(X[:30], Y[:30]))
    assert again.info == bridge.info
    picked = bridge.top(4)
    assert picked.rank == 4 and set(picked.lam.tolist()) <= set(bridge.lam.tolist())


@pytest.mark.parametrize(
    ("X", "Y", "message"),
    [
        (torch.randn(10, 4), torch.randn(9, 3), "each row is a pair"),
        (torch.full((10, 4), float("nan")), torch.randn(10, 3), "NaN or Inf"),
        (torch.randn(10, 4), torch.randn(0, 3), "non-empty"),
    ],
)
def test_bad_anchors_are_one_line(X, Y, message):
    with pytest.raises(InvalidInputError, match=message):
        fit_bridge(X, Y, BridgeSettings(image_rank=2, text_rank=2))


def test_features_of_the_wrong_dimension_are_one_line():
    X, Y, _ = rotated()
    bridge = fit_bridge(X, Y, BridgeSettings(image_rank=4, text_rank=4))
    with pytest.raises(InvalidInputError, match="do not fit a basis of dimension 12"):
        bridge.embed(torch.randn(3, 5, dtype=torch.float64), "image")


def test_csls_is_its_definition():
    """``2 s(x, y) − r(x) − r(y)``, each ``r`` the mean of the ``k`` largest similarities of its row or column (a loop)."""
    from eigenmix.bridge.model import csls

    S = torch.randn(7, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    k = 3
    expected = torch.empty_like(S)
    for i in range(7):
        for j in range(9):
            rx = sorted(S[i].tolist(), reverse=True)[:k]
            ry = sorted(S[:, j].tolist(), reverse=True)[:k]
            expected[i, j] = 2 * S[i, j] - sum(rx) / k - sum(ry) / k
    assert torch.allclose(csls(S, k), expected, atol=1e-12)


def test_a_pairs_directions_add_up_to_its_cosine_and_are_read_by_their_anchors():
    from eigenmix.bridge.explain import explain_pair

    X, Y, _ = rotated(n=60, d=8)
    bridge = fit_bridge(X, Y, BridgeSettings(image_rank=8, text_rank=8))
    names = [f"anchor {i}" for i in range(60)]
    out = explain_pair(bridge, X[3], Y[3], Y, names, top=8, per=2)
    assert abs(out["cosine"] - float(bridge.similarity(X[3:4], Y[3:4]))) < 1e-12
    assert abs(out["top_share"] - out["cosine"]) < 1e-12  # every direction shown: the terms add up
    shares = [d["share"] for d in out["directions"]]
    assert shares == sorted(shares, reverse=True)
    za = bridge.embed(Y, "text")
    for d in out["directions"]:
        side = 1.0 if d["image"] + d["text"] >= 0 else -1.0
        ranked = sorted(range(60), key=lambda i: -side * float(za[i, d["index"]]))  # a loop, not topk
        assert list(d["anchors"]) == [names[i] for i in ranked[:2]]
