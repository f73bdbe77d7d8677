"""Which joint directions carry a pair, and what they mean.

The similarity of an image-side row and a text-side row across a bridge is a sum over the
joint directions, ``z_x · z_y = Σ_j z_x[j] z_y[j]`` (:meth:`Bridge.embed`); each term is that
direction's share of the pair. A direction is read by its anchors: the anchor texts whose
text-side embedding lies furthest along it, on each side of zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from eigenmix.bridge.model import Bridge
from eigenmix.errors import InvalidInputError


@dataclass(frozen=True)
class Direction:
    """One joint direction's part in a pair."""

    index: int  # the direction's index in the bridge
    lam: float  # its coefficient
    share: float  # z_x[j] z_y[j]: its term of the pair's cosine
    image: float  # z_x[j]
    text: float  # z_y[j]
    anchors: tuple[str, ...]  # the anchor texts furthest along the direction, on the pair's side of zero


def explain_pair(bridge: Bridge, x: Tensor, y: Tensor, anchors: Tensor, names: list[str], top: int = 5, per: int = 5) -> dict:
    """The ``top`` directions with the largest terms of the pair's cosine, each with its ``per``
    nearest anchor texts.

    Args:
        x: ``(d_image,)`` the image-side row.
        y: ``(d_text,)`` the text-side row.
        anchors: ``(n, d_text)`` the anchor texts' embeddings, ``names`` their texts.
    """
    if anchors.shape[0] != len(names):
        raise InvalidInputError(f"{anchors.shape[0]} anchor embeddings but {len(names)} anchor texts")
    zx, zy = bridge.embed(x[None], "image")[0], bridge.embed(y[None], "text")[0]
    terms = zx * zy  # (r,), sums to the cosine
    za = bridge.embed(anchors, "text")  # (n, r)
    out = []
    for j in terms.argsort(descending=True)[: min(top, bridge.rank)].tolist():
        side = 1.0 if float(zx[j] + zy[j]) >= 0 else -1.0  # the pair's side of zero
        nearest = (side * za[:, j]).topk(min(per, len(names))).indices.tolist()
        out.append(Direction(j, float(bridge.lam[j]), float(terms[j]), float(zx[j]), float(zy[j]), tuple(names[i] for i in nearest)))
    return {"cosine": float(terms.sum()), "directions": [d.__dict__ for d in out], "top_share": float(sum(d.share for d in out))}
