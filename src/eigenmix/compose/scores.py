"""How strongly each module of a library reads an input: the spectral scores that the
spectral router (:mod:`eigenmix.compose.routers.spectral`) routes by and that the
calibration statistics (:mod:`eigenmix.compose.router_stats`) standardise.

Module k's response to ``x`` lives in its row space: ``V_kᵀ x`` (design note 5).

- ``energy``: ``‖V_kᵀ x‖ / ‖x‖``, the share of ``x`` in the module's row space (in [0, 1]);
- ``response``: ``‖diag(σ_k) V_kᵀ x‖ / (‖σ_k‖ ‖x‖)``, the norm of the module's update on ``x``
  per unit of its own spectrum.

Per sequence, a module's score is its per-token score averaged over the real tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from eigenmix.compose.library import LayerView

Score = Literal["energy", "response"]


def module_energy(x: Tensor, view: LayerView, score: Score = "energy") -> Tensor:
    """Raw scores ``(…, K_l)`` of ``x`` ``(…, n)`` (one product with the stacked ``V``)."""
    norm = x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    _, S, V, ranks = view.stacked
    z = x @ V.to(x.dtype)  # (…, Σr)
    if score == "response":
        z = z * S.to(x.dtype)
    parts = torch.split(z.square(), list(ranks), dim=-1)
    energy = torch.stack([p.sum(-1) for p in parts], dim=-1).sqrt()  # (…, K_l)
    if score == "energy":
        return energy / norm
    spectra = torch.stack([s.norm() for s in view.S]).clamp(min=1e-12).to(x.dtype)
    return energy / spectra / norm


def sequence_scores(x: Tensor, view: LayerView, mask: Tensor | None, score: Score = "energy") -> Tensor:
    """Per sequence ``(rows, 1, K_l)``: each module's score averaged over the real tokens of
    ``x`` ``(rows, tokens, n)`` (not the score of the averaged token, which mixes the tokens
    before the module reads them and tells the tasks apart less well)."""
    s = module_energy(x, view, score)  # (rows, tokens, K_l)
    if mask is None:
        return s.mean(1, keepdim=True)
    m = mask.to(s.dtype).unsqueeze(-1)
    return (s * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)
