"""One pass over a model that records every layer's attribution (and, for a merged or tuned
adapter, adds the update itself): forward hooks from :mod:`eigenmix.compose.hooks`, one
product ``x V`` per layer, and per row the D×D moment of the responses — no ``m × n``
matrix, no m-sized tensor kept."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from eigenmix.compose.hooks import on_output
from eigenmix.explain.attribution import moments, numerators, part_matrix, responses, token_numerators
from eigenmix.explain.directions import LayerDirections
from eigenmix.inputs import row_mask

Gate = Callable[[str, Tensor], Tensor | None]  # (layer, x (rows, tokens, n)) → (rows, tokens|1, D), None: do not record this call


@dataclass
class LayerTally:
    """One layer's attribution, summed over the rows seen so far (``R`` rows, ``D``
    directions, ``P`` parts).

    Attributes:
        S: ``(D, D)`` ``Σ_t a_t a_tᵀ`` over every real token of every row.
        parts: ``(R, P, P)`` per row ``Σ_t ⟨y_k, y_l⟩`` (attribution.part_matrix).
        directions: ``(R, D)`` per row each direction's share numerator.
        peak: ``(R, D)`` per row each direction's largest ``|a_dt|``; ``peak_token`` ``(R, D)``
            the token where it is (position in the row's tokens); ``signed_peak`` ``a_dt`` there.
    """

    S: Tensor
    parts: Tensor
    directions: Tensor
    peak: Tensor
    peak_token: Tensor
    signed_peak: Tensor


class Recorder:
    """Hooks on the layers of ``directions`` that record attributions (:meth:`run`).

    Args:
        model: the frozen base model (not modified; :meth:`close` removes the hooks).
        directions: layer → its directions (parts indexed ``0..parts-1``).
        parts: how many parts.
        rows: how many rows will be recorded (``R``).
        apply: add ``Σ_d keep_d a_d u_d`` to the layer's output (False when another hook,
            a routed library's, adds the update).
        gate: a router's coefficients per direction (see :data:`Gate`).
        per_token: keep each row's per-token numerators summed over layers (``tokens``): only
            where every layer sees the same tokens (a transformer; not a CNN, whose maps
            shrink from layer to layer).
    """

    def __init__(
        self,
        model: nn.Module,
        directions: Mapping[str, LayerDirections],
        parts: int,
        rows: int,
        *,
        apply: bool = True,
        gate: Gate | None = None,
        per_token: bool = True,
    ) -> None:
        self.directions, self.parts, self.apply, self.gate, self.per_token = dict(directions), parts, apply, gate, per_token
        self.grams = {layer: d.U.T @ d.U for layer, d in self.directions.items()}
        self.up = {layer: d.U.to(torch.float32).T.contiguous() for layer, d in self.directions.items()}
        self.tallies = {layer: self._empty(d, rows) for layer, d in self.directions.items()}
        self.tokens: dict[int, tuple[Tensor, Tensor]] = {}  # row → every layer's per-token part numerators (tokens, P), ‖y_t‖² (tokens,)
        self.keep: Mapping[str, Tensor] | None = None  # layer → (rows, D) 0/1: directions left in, per row of the batch
        self.record = True
        self._rows: Tensor | None = None
        self._mask: Tensor | None = None
        self._hooks = [on_output(model, layer, d.shape, self._hook(layer)) for layer, d in self.directions.items()]

    def _empty(self, d: LayerDirections, rows: int) -> LayerTally:
        D, P = int(d.sigma.shape[0]), self.parts
        z = torch.zeros
        return LayerTally(z(D, D, dtype=torch.float64), z(rows, P, P, dtype=torch.float64), z(rows, D, dtype=torch.float64),
                          z(rows, D, dtype=torch.float64), z(rows, D, dtype=torch.long), z(rows, D, dtype=torch.float64))  # fmt: skip

    def _hook(self, layer: str) -> Callable[[Tensor, Tensor], Tensor]:
        d = self.directions[layer]

        def change(x: Tensor, out: Tensor) -> Tensor:
            x3 = x.reshape(x.shape[0], -1, x.shape[-1])  # (rows, tokens, n)
            gate = None
            if self.gate is not None:
                gate = self.gate(layer, x3)
                if gate is None:  # a router's scoring pass: nothing is added yet
                    return out
            a = responses(x3, d, gate)  # (rows, tokens, D)
            if self.record and self._rows is not None:
                self._tally(layer, a)
            if not self.apply:
                return out
            if self.keep is not None:
                a = a * self.keep[layer].to(a.dtype).unsqueeze(1)
            return out + (a.to(out.dtype) @ self.up[layer].to(out.dtype)).reshape(out.shape)

        return change

    def _tally(self, layer: str, a: Tensor) -> None:
        t, G, rows, owner = self.tallies[layer], self.grams[layer], self._rows, self.directions[layer].owner
        assert rows is not None
        real = a if self._mask is None else a * self._mask.to(a.dtype).unsqueeze(-1)  # padding responds 0
        S = moments(real)  # (rows, D, D)
        t.S += S.sum(0)
        t.parts[rows] += part_matrix(S, G, owner, self.parts)
        t.directions[rows] += numerators(S, G)
        peak, where = real.abs().max(1)  # (rows, D)
        t.peak[rows], t.peak_token[rows] = peak, where
        t.signed_peak[rows] = real.gather(1, where.unsqueeze(1)).squeeze(1)
        if not self.per_token:
            return
        num, energy = token_numerators(real, G, owner, self.parts)
        for j, row in enumerate(rows.tolist()):
            before = self.tokens.get(row)
            self.tokens[row] = (num[j], energy[j]) if before is None else (num[j] + before[0], energy[j] + before[1])

    @torch.no_grad()
    def run(self, model: nn.Module, batch: Mapping[str, Tensor], rows: Sequence[int], *, keep: Mapping[str, Tensor] | None = None,
            record: bool = True) -> Any:  # fmt: skip
        """One forward pass of ``model`` (the hooked one, or a routed model around it) on
        ``batch``, whose rows are ``rows`` of the probe set; ``keep`` removes directions per
        row (deletion), ``record`` False runs without recording."""
        self._rows, self._mask, self.keep, self.record = torch.tensor(list(rows)), row_mask(batch), keep, record
        try:
            return model(**batch)
        finally:
            self._rows, self._mask, self.keep, self.record = None, None, None, True

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def record_rows(
    model: nn.Module,
    recorder: Recorder,
    batches: Iterable[tuple[Sequence[int], Mapping[str, Tensor]]],
    on_batch: Callable[[int], None] | None = None,
) -> list[Any]:
    """Run every batch ``(row indices, tokenised batch)`` through ``model`` (the hooked base
    model, or a routed model around it), recording; the outputs in batch order."""
    outputs = []
    for rows, batch in batches:
        outputs.append(recorder.run(model, batch, rows))
        if on_batch is not None:
            on_batch(len(rows))
    return outputs
