"""Each side's spectral basis: centred features, truncated SVD, coordinates in the basis.

For ``n`` anchor features ``X`` ``(n, d)`` of one encoder, ``X − μ = U S Vᵀ``; the side keeps
``μ (d,)``, the top ``k`` right singular vectors ``V (d, k)`` and their singular values
``S (k,)``. A feature's coordinates are ``(x − μ) V`` ``(k,)``: the directions along which the
anchors vary most, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from eigenmix.errors import InvalidInputError


@dataclass(frozen=True)
class SideBasis:
    """One encoder's spectral basis.

    Attributes:
        mean: ``(d,)`` the anchors' mean.
        V: ``(d, k)`` orthonormal columns, the top right singular vectors of the centred anchors.
        S: ``(k,)`` their singular values, descending.
    """

    mean: Tensor
    V: Tensor
    S: Tensor

    @property
    def dim(self) -> int:
        return int(self.V.shape[0])

    @property
    def rank(self) -> int:
        return int(self.V.shape[1])

    def coordinates(self, X: Tensor) -> Tensor:
        """``(N, d)`` features → ``(N, k)`` coordinates ``(X − μ) V``."""
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise InvalidInputError(f"features of shape {tuple(X.shape)} do not fit a basis of dimension {self.dim}")
        return (X.to(self.V.dtype) - self.mean) @ self.V


def check_features(X: Tensor, what: str) -> None:
    """One line for features a bridge cannot use: not a matrix, empty, or not finite."""
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise InvalidInputError(f"{what}: features must be a non-empty (rows, dim) matrix, got {tuple(X.shape)}")
    if not torch.isfinite(X).all():
        raise InvalidInputError(f"{what}: features hold NaN or Inf")


def side_basis(X: Tensor, k: int) -> SideBasis:
    """The spectral basis of anchors ``X`` ``(n, d)``, truncated to ``k ≤ min(n − 1, d)``
    directions (centring removes one), in float64."""
    check_features(X, "anchors")
    X = X.to(torch.float64)
    if not 1 <= k <= min(X.shape[0] - 1, X.shape[1]):
        raise InvalidInputError(
            f"rank {k}: a basis of {X.shape[0]} anchors of dimension {X.shape[1]} has 1 … {min(X.shape[0] - 1, X.shape[1])}"
        )
    mean = X.mean(0)
    _, S, Vh = torch.linalg.svd(X - mean, full_matrices=False)
    return SideBasis(mean, Vh[:k].T.contiguous(), S[:k].contiguous())
