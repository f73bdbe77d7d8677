"""The published ways of relating two encoders through paired anchors, beside the bridge.

Each takes the anchors ``X (n, d₁)`` (image side) and ``Y (n, d₂)`` (text side), row ``i`` of
each a pair, and returns the similarity ``(N, M)`` of image-side queries ``Xq`` to text-side
candidates ``Yq``:

- :func:`relative`: relative representations (Moschella et al., ICLR 2023,
  https://arxiv.org/abs/2209.15430): each vector as its cosines to its own side's anchors;
  the two sides' relative vectors are compared directly.
- :func:`asif`: ASIF (Norelli et al., NeurIPS 2023, https://arxiv.org/abs/2210.01738):
  relative vectors kept sparse (each row's ``k`` largest cosines, raised to ``p``).
- :func:`ridge`: a linear map ``X → Y`` by ridge regression (latent space translation,
  Maiorca et al., NeurIPS 2023, https://arxiv.org/abs/2311.00664, its affine variant).
- :func:`procrustes`: the orthogonal map between the two sides' top-``k`` spectral bases.
- :func:`cca`: ridge CCA in those bases, the joint coordinates weighted by the canonical correlations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from eigenmix.bridge.bases import side_basis
from eigenmix.bridge.joint import cca_start, procrustes_start


def _cos(Q: Tensor, A: Tensor) -> Tensor:
    return F.normalize(Q, dim=-1) @ F.normalize(A, dim=-1).T


def relative(X: Tensor, Y: Tensor, Xq: Tensor, Yq: Tensor) -> Tensor:
    """Cosine of the two sides' relative vectors (centred on each side's anchor mean)."""
    X, Y, Xq, Yq = (t.to(torch.float64) for t in (X, Y, Xq, Yq))
    mx, my = X.mean(0), Y.mean(0)
    return _cos(_cos(Xq - mx, X - mx), _cos(Yq - my, Y - my))


def asif(X: Tensor, Y: Tensor, Xq: Tensor, Yq: Tensor, k: int = 64, p: float = 8.0) -> Tensor:
    """ASIF's sparse relative vectors: each row's ``k`` largest anchor cosines to the power ``p``."""
    X, Y, Xq, Yq = (t.to(torch.float64) for t in (X, Y, Xq, Yq))

    def sparse(R: Tensor) -> Tensor:
        top = R.topk(min(k, R.shape[1]), dim=-1)
        return torch.zeros_like(R).scatter(-1, top.indices, top.values.clamp(min=0) ** p)

    return _cos(sparse(_cos(Xq, X)), sparse(_cos(Yq, Y)))


def ridge(X: Tensor, Y: Tensor, Xq: Tensor, Yq: Tensor, alpha: float = 1.0) -> Tensor:
    """Cosine of ``(x − μ_x) M + μ_y`` to ``y``, ``M = argmin ‖(X − μ_x) M − (Y − μ_y)‖² + alpha ‖M‖²``."""
    X, Y, Xq, Yq = (t.to(torch.float64) for t in (X, Y, Xq, Yq))
    mx, my = X.mean(0), Y.mean(0)
    Xc = X - mx
    M = torch.linalg.solve(Xc.T @ Xc + alpha * torch.eye(X.shape[1], dtype=X.dtype), Xc.T @ (Y - my))
    return _cos((Xq - mx) @ M, Yq - my)


def procrustes(X: Tensor, Y: Tensor, Xq: Tensor, Yq: Tensor, k: int = 256) -> Tensor:
    """Cosine after the orthogonal map between the top-``k`` spectral bases of the two sides."""
    bx, by = side_basis(X, min(k, X.shape[0] - 1, X.shape[1])), side_basis(Y, min(k, Y.shape[0] - 1, Y.shape[1]))
    start = procrustes_start(bx.coordinates(X), by.coordinates(Y))
    return _cos(bx.coordinates(Xq) @ start.P_a, by.coordinates(Yq) @ start.P_b)


def cca(X: Tensor, Y: Tensor, Xq: Tensor, Yq: Tensor, k: int = 256, eps: float = 1.0) -> Tensor:
    """Cosine in ridge CCA's canonical coordinates, each weighted by its canonical correlation."""
    bx, by = side_basis(X, min(k, X.shape[0] - 1, X.shape[1])), side_basis(Y, min(k, Y.shape[0] - 1, Y.shape[1]))
    start = cca_start(bx.coordinates(X), by.coordinates(Y), eps)
    return _cos(bx.coordinates(Xq) @ start.P_a * start.strength, by.coordinates(Yq) @ start.P_b * start.strength)


BASELINES = {"relative": relative, "asif": asif, "ridge": ridge, "procrustes": procrustes, "cca": cca}
