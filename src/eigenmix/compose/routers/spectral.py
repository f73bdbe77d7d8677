"""eigenmix's parameter-free router: how strongly each module reads the input.

Module k's response to ``x`` lives in its row space: ``V_kᵀ x`` (design note 5). Two scores:

- ``energy``: ``‖V_kᵀ x‖ / ‖x‖``, the share of ``x`` in the module's row space (in [0, 1]);
- ``response``: ``‖diag(σ_k) V_kᵀ x‖ / (‖σ_k‖ ‖x‖)``, the norm of the module's update on ``x``
  per unit of its own spectrum.

Per sequence, a module's score is its per-token score averaged over the real tokens.

Raw scores are not comparable across modules (a module of higher rank, or one whose row
space holds common directions, wins every input), so they are calibrated:

- ``none``: as they are;
- ``chance``: divided by their value for an isotropic random input (``√(r_k / n)`` for the
  energy, ``1 / √n`` for the response): what the adapters alone tell;
- ``stats``: standardised by the module's own mean and spread on a few unlabeled rows of its
  own task (:func:`eigenmix.compose.calibrate.calibrate`, kept in the library beside it);
- ``stream``: standardised over the rows of the batch itself (no stored statistics).

Coefficients are a softmax of the scores at ``temperature`` over the ``top_k`` highest, per
sequence (its tokens' scores averaged) or per token: in every layer (``scope: layer``), once from
the scores averaged over every layer (``all``: a first, scoring pass on the base model), or
once at the first routed layer (``first``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from eigenmix.compose.library import LayerView
from eigenmix.compose.routing import Batch, Scope, layer_average, mix
from eigenmix.errors import InvalidInputError

Score = Literal["energy", "response"]
Calibration = Literal["none", "chance", "stats", "stream"]
Level = Literal["sequence", "token"]


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


class SpectralRouter:
    """The parameter-free spectral router (see the module docstring for each setting). The
    defaults (one decision from every layer's scores, temperature 0.2, dense) are what the
    composition benchmark chose on validation rows for every calibration."""

    name = "spectral"

    def __init__(
        self,
        score: Score = "energy",
        calibration: Calibration = "chance",
        level: Level = "sequence",
        scope: Scope = "all",
        temperature: float = 0.2,
        top_k: int | None = None,
        stats: dict[str, tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        if calibration == "stats" and not stats:
            raise InvalidInputError("calibration 'stats' needs each module's statistics (eigenmix.compose.calibrate)")
        if temperature <= 0:
            raise InvalidInputError(f"temperature must be positive; got {temperature}")
        self.score, self.calibration, self.level, self.scope = score, calibration, level, scope
        self.temperature, self.top_k = temperature, top_k
        self.stats = stats or {}  # layer → ((K,) mean, (K,) std) of each library module's score on its own rows

    def scores(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        """Calibrated scores ``(rows, tokens or 1, K_l)``."""
        s = sequence_scores(x, view, batch.mask, self.score) if self.level == "sequence" else module_energy(x, view, self.score)
        n = x.shape[-1]
        if self.calibration == "chance":
            if self.score == "energy":
                chance = torch.tensor([math.sqrt(V.shape[1] / n) for V in view.V], dtype=s.dtype)
            else:
                chance = torch.full((len(view.V),), 1 / math.sqrt(n), dtype=s.dtype)
            s = s / chance
        elif self.calibration == "stats":
            if layer not in self.stats:
                raise InvalidInputError(f"no calibration statistics for layer '{layer}'")
            mean, std = (t[list(view.members)].to(s.dtype) for t in self.stats[layer])
            s = (s - mean) / std.clamp(min=1e-6)
        elif self.calibration == "stream":
            flat = s.reshape(-1, s.shape[-1])
            s = (s - flat.mean(0)) / flat.std(0, unbiased=False).clamp(min=1e-6) if flat.shape[0] > 1 else s
        return s

    def coefficients(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        return mix(self.scores(layer, x, view, batch), self.temperature, self.top_k)

    def decide(self, scores: dict[str, Tensor], views: dict[str, LayerView], k: int) -> Tensor:
        """Coefficients from the scores averaged over every layer (``scope = "all"``)."""
        return mix(layer_average(scores, views, k), self.temperature, self.top_k)
