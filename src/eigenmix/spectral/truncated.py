"""Truncated SVD of a dense matrix: exact, or randomized for large matrices.

The randomized variant is Halko, Martinsson & Tropp (2011), "Finding structure with
randomness" (https://arxiv.org/abs/0909.4061), as implemented by ``torch.svd_lowrank``
(range finder with ``k + oversample`` Gaussian probes and QR-stabilised power
iterations). eigenmix only adds a local, seeded generator so results are reproducible
without touching the global RNG.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eigenmix.spectral.factored import SVD


def truncated_svd(W: Tensor, k: int | None = None) -> SVD:
    """Exact thin SVD of ``W``, keeping the ``k`` leading triplets.

    Args:
        W: ``(m, n)`` matrix; the SVD runs in float64 and is returned in ``W.dtype``.
        k: number of triplets to keep (default: all ``min(m, n)``).

    Returns:
        ``SVD(U (m, k), S (k,), V (n, k))``.
    """
    if W.ndim != 2:
        raise ValueError(f"truncated_svd needs a matrix; got shape {tuple(W.shape)}")
    U, S, Vh = torch.linalg.svd(W.to(torch.float64), full_matrices=False)
    k = S.numel() if k is None else min(k, S.numel())
    return SVD(U, S, Vh.T).truncate(k).to(W.dtype)


def randomized_svd(
    W: Tensor,
    k: int,
    *,
    oversample: int = 10,
    n_iter: int = 4,
    seed: int = 0,
) -> SVD:
    """Approximate top-``k`` SVD of ``W`` by randomized range finding.

    Cost ``O(m n (k + oversample) (2 n_iter + 2))``. Accurate when the spectrum decays
    past ``k``; more power iterations sharpen the result for flat spectra.

    Args:
        W: ``(m, n)`` matrix, any float dtype; computed and returned in ``W.dtype``
            (pass float64 for the tightest singular values).
        k: number of triplets to return.
        oversample: extra probe vectors beyond ``k``.
        n_iter: power (subspace) iterations.
        seed: seed of the Gaussian probes; the global RNG is left untouched.

    Returns:
        ``SVD(U (m, k), S (k,), V (n, k))`` in ``W.dtype``.
    """
    if W.ndim != 2:
        raise ValueError(f"randomized_svd needs a matrix; got shape {tuple(W.shape)}")
    q = min(k + oversample, *W.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        U, S, V = torch.svd_lowrank(W, q=q, niter=n_iter)
    return SVD(U, S, V).truncate(min(k, q))


def svd(W: Tensor, k: int | None = None, *, randomized: bool | None = None, seed: int = 0) -> SVD:
    """Top-``k`` SVD of ``W``, choosing the exact or randomized algorithm.

    With ``randomized=None`` the randomized algorithm is used when ``k`` is given and is
    below a tenth of ``min(m, n)`` (where it is both faster and accurate for the decaying
    spectra of trained updates); otherwise the exact one.
    """
    small = min(W.shape)
    if randomized is None:
        randomized = k is not None and 10 * k < small
    if randomized and k is not None:
        return randomized_svd(W, k, seed=seed)
    return truncated_svd(W, k)
