"""A bridge: two spectral bases, a joint space between them, and one coefficient (an
eigenvalue) per joint direction.

An image-side feature ``x`` and a text-side feature ``y`` land at

    z_x = normalize(λ ⊙ ((x − μ_x) V_x P_a)),    z_y = normalize(λ ⊙ ((y − μ_y) V_y P_b)),

and their similarity is ``z_x · z_y``. Keeping the ``d`` directions of largest ``|λ|``
(:meth:`Bridge.top`) picks the features a small task model needs. Saved as
``bridge.safetensors`` (the tensors) and ``bridge.json`` (what they are); nothing pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from eigenmix.bridge.bases import SideBasis, check_features
from eigenmix.errors import InvalidInputError

Side = Literal["image", "text"]
Hubness = Literal["csls", "none"]
TENSORS = "bridge.safetensors"
META = "bridge.json"
FORMAT = "eigenmix-bridge-1"


@dataclass(frozen=True)
class Bridge:
    """Two sides' bases, their projections into the joint directions, and the coefficients.

    Attributes:
        image: the image side's basis (``d₁ → k₁``).
        text: the text side's basis (``d₂ → k₂``).
        P_image: ``(k₁, r)`` image coordinates → joint directions.
        P_text: ``(k₂, r)`` text coordinates → joint directions.
        lam: ``(r,)`` the coefficient of each joint direction.
        info: what made it (start, encoders, anchors, fit), recorded in ``bridge.json``.
    """

    image: SideBasis
    text: SideBasis
    P_image: Tensor
    P_text: Tensor
    lam: Tensor
    info: dict[str, Any]

    @property
    def rank(self) -> int:
        return int(self.lam.shape[0])

    def joint(self, X: Tensor, side: Side) -> Tensor:
        """Unnormalised joint coordinates ``(N, r)`` of features of ``side``, before ``λ``."""
        check_features(X, f"{side} features")
        basis, P = (self.image, self.P_image) if side == "image" else (self.text, self.P_text)
        return basis.coordinates(X) @ P

    def embed(self, X: Tensor, side: Side) -> Tensor:
        """``(N, d_side)`` features → ``(N, r)`` unit vectors in the joint space."""
        return F.normalize(self.joint(X, side) * self.lam, dim=-1)

    def similarity(self, X_image: Tensor, Y_text: Tensor) -> Tensor:
        """``(N, M)`` cosine similarity of every image-side row to every text-side row."""
        return self.embed(X_image, "image") @ self.embed(Y_text, "text").T

    def scores(self, X_image: Tensor, Y_text: Tensor) -> Tensor:
        """``(N, M)`` retrieval scores: the similarity with the hubness correction the bridge
        was fitted with (``csls`` over these queries and candidates, or none)."""
        S = self.similarity(X_image, Y_text)
        settings = self.info.get("settings", {})
        return csls(S, int(settings.get("csls_k", 10))) if settings.get("hubness") == "csls" else S

    def top(self, d: int) -> Bridge:
        """The bridge on its ``d`` joint directions of largest ``|λ|`` (feature picking)."""
        if not 1 <= d <= self.rank:
            raise InvalidInputError(f"d must be in 1 … {self.rank}, got {d}")
        keep = self.lam.abs().argsort(descending=True)[:d].sort().values
        return replace(self, P_image=self.P_image[:, keep], P_text=self.P_text[:, keep], lam=self.lam[keep])


def save_bridge(bridge: Bridge, folder: Path) -> None:
    """Write ``bridge.safetensors`` and ``bridge.json`` into ``folder`` (the caller makes it atomic)."""
    tensors = {
        "image.mean": bridge.image.mean, "image.V": bridge.image.V, "image.S": bridge.image.S,
        "text.mean": bridge.text.mean, "text.V": bridge.text.V, "text.S": bridge.text.S,
        "P_image": bridge.P_image, "P_text": bridge.P_text, "lam": bridge.lam,
    }  # fmt: skip
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / TENSORS))
    meta = {"format": FORMAT, "rank": bridge.rank, "image_dim": bridge.image.dim, "text_dim": bridge.text.dim, **bridge.info}
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n")


def load_bridge(folder: Path | str) -> Bridge:
    """A bridge saved by :func:`save_bridge`; one line for a folder that holds none."""
    from eigenmix.io.safetensors_io import read_safetensors

    folder = Path(folder)
    if not (folder / TENSORS).is_file() or not (folder / META).is_file():
        raise InvalidInputError(f"{folder}: not a bridge (needs {TENSORS} and {META})")
    meta = json.loads((folder / META).read_text())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InvalidInputError(f"{folder / META}: not a {FORMAT} file")
    t = read_safetensors(folder / TENSORS)
    need = {"image.mean", "image.V", "image.S", "text.mean", "text.V", "text.S", "P_image", "P_text", "lam"}
    if set(t) != need:
        raise InvalidInputError(f"{folder / TENSORS}: expected tensors {sorted(need)}, got {sorted(t)}")
    image = SideBasis(t["image.mean"], t["image.V"], t["image.S"])
    text = SideBasis(t["text.mean"], t["text.V"], t["text.S"])
    r = t["lam"].shape[0]
    if t["P_image"].shape != (image.rank, r) or t["P_text"].shape != (text.rank, r):
        raise InvalidInputError(f"{folder / TENSORS}: the projections do not fit the bases and {r} coefficients")
    info = {k: v for k, v in meta.items() if k not in ("format", "rank", "image_dim", "text_dim")}
    return Bridge(image, text, t["P_image"], t["P_text"], t["lam"], info)


def csls(S: Tensor, k: int = 10) -> Tensor:
    """Cross-domain similarity local scaling (Conneau et al., ICLR 2018, https://arxiv.org/abs/1710.04087):
    ``2 S − r_q − r_c``, each query's and each candidate's mean similarity to its ``k`` nearest
    of the other side (``k`` capped at the pool's size): a hub near everything loses its edge."""
    rq = S.topk(min(k, S.shape[1]), dim=1).values.mean(1, keepdim=True)  # (N, 1)
    rc = S.topk(min(k, S.shape[0]), dim=0).values.mean(0, keepdim=True)  # (1, M)
    return 2 * S - rq - rc


def retrieval(similarity: Tensor, k: int = 5) -> tuple[float, float]:
    """Top-1 and top-``k`` accuracy of retrieving row ``i``'s pair ``i`` from ``similarity (N, N)``
    (ties count against: a rival as similar as the pair ranks above it)."""
    ranks = (similarity >= similarity.diagonal()[:, None]).sum(1) - 1  # rivals at least as similar
    return float((ranks < 1).double().mean()), float((ranks < k).double().mean())
