"""eigenmix's parameter-free router: how strongly each module reads the input.

Module k's response to ``x`` lives in its row space: ``V_kᵀ x`` (design note 5); the scores,
``energy`` and ``response``, are in :mod:`eigenmix.compose.scores`.

Raw scores are not comparable across modules (a module of higher rank, or one whose row
space holds common directions, wins every input), so they are calibrated:

- ``none``: as they are;
- ``chance``: divided by their value for an isotropic random input (``√(r_k / n)`` for the
  energy, ``1 / √n`` for the response): what the adapters alone tell;
- ``stats``: standardised by the module's own mean and spread on a few unlabeled rows of its
  own task (:func:`eigenmix.compose.router_stats.calibrate`, kept in the library beside it);
- ``stream``: standardised over the rows of the batch itself (no stored statistics).

Coefficients are a softmax of the scores at ``temperature`` over the ``top_k`` highest, per
sequence (its tokens' scores averaged) or per token: in every layer (``scope: layer``), once from
the scores averaged over every layer (``all``: a first, scoring pass on the base model), or
once at the first routed layer (``first``).

Registered as ``spectral`` (:mod:`eigenmix.compose.routers.registry`) with the settings the
composition benchmark chose on validation rows (``benchmarks/results/compose/results.json``,
"chosen"): one decision per sequence from every layer's scores (two passes), a dense softmax
at temperature 0.2. There, ``calibration: stream`` takes the statistics of the whole stream
being routed once (:func:`eigenmix.compose.router_stats.stream_statistics`), as ``stats`` takes
those the modules keep.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from eigenmix.compose.library import LayerView, Library
from eigenmix.compose.router_stats import stored_statistics, stream_statistics
from eigenmix.compose.routers.registry import RouterParams, Stream, register
from eigenmix.compose.routing import Batch, Scope, layer_average, mix
from eigenmix.compose.scores import Score, module_energy, sequence_scores
from eigenmix.errors import InvalidInputError

Calibration = Literal["none", "chance", "stats", "stream"]
Level = Literal["sequence", "token"]


class SpectralParams(RouterParams):
    """The spectral router's settings (its defaults: the composition benchmark's choice)."""

    calibration: Literal["chance", "stats", "stream"] = Field(
        "chance", description="chance (the adapters alone), stats (the statistics the modules keep), stream (those of the rows routed)"
    )
    temperature: float = Field(0.2, gt=0, description="softmax temperature")
    top_k: int | None = Field(None, ge=1, description="keep the k largest coefficients (unset: all)")
    level: Level = Field("sequence", description="route each sequence (its tokens' scores averaged) or each token")
    scope: Scope = Field(
        "all", description="all: one decision from every layer's scores (two passes); layer: in every layer; first: at the first layer"
    )


_D = SpectralParams()  # the constructor's defaults are the registered ones


class SpectralRouter:
    """The parameter-free spectral router (see the module docstring for each setting); the
    defaults are the registered ones (:class:`SpectralParams`)."""

    name = "spectral"

    def __init__(
        self,
        score: Score = "energy",
        calibration: Calibration = _D.calibration,
        level: Level = _D.level,
        scope: Scope = _D.scope,
        temperature: float = _D.temperature,
        top_k: int | None = _D.top_k,
        stats: dict[str, tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        if calibration == "stats" and not stats:
            raise InvalidInputError("calibration 'stats' needs each module's statistics (eigenmix.compose.router_stats)")
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


@register(
    "spectral",
    router=SpectralRouter,
    params=SpectralParams,
    description="how much of the input lies in each module's row space (‖V_kᵀ x‖ / ‖x‖), calibrated; a softmax of the scores",
    paper="eigenmix (this library): spectral energy routing, design note 5; rule in eigenmix.compose.routers.spectral",
    url=None,
)
def build_spectral(library: Library, model: nn.Module, p: SpectralParams, stream: Stream | None) -> SpectralRouter:
    """The energy score with ``p``'s calibration: ``stats`` from the statistics the modules
    keep, ``stream`` from the rows about to be routed (both standardise as ``stats``)."""
    stats = None
    if p.calibration == "stats":
        stats = stored_statistics(library)
    elif p.calibration == "stream":
        if stream is None:
            raise InvalidInputError("calibration 'stream' needs the rows being routed")
        stats = stream_statistics(model, library, stream())
    return SpectralRouter("energy", "chance" if stats is None else "stats", p.level, p.scope, p.temperature, p.top_k, stats)
