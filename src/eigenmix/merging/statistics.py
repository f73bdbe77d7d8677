"""Calibration statistics as an input of a merge: per layer, per task, the Gram of the
layer's inputs (``G_k = Σ_t x_t x_tᵀ`` over the task's tokens, accumulated in float64).

A method that needs them registers ``calibration="own"`` (each module's own inputs: every
task's rows through the base model with that task's module applied) or ``"merged"`` (the
inputs the merged model's earlier blocks give each task's rows, RegMean++). The engine asks
a :class:`GramSource` for each matrix layer's :class:`LayerGrams` and hands them to the
method in ``ctx.grams``; methods that do not declare calibration never see a source (the
CLI does not even load the model for them).

Two sources exist: :class:`Grams` (fixed tensors: computed once by
:func:`eigenmix.compose.grams.gram_statistics` from a model and rows, or given by the
caller) and :class:`eigenmix.compose.grams.MergedGrams` (block by block, from the merge in
progress). Both implement the :class:`GramSource` protocol.

**Sketches.** A layer whose Gram would be too large (``n_in`` above a threshold) may be
given in a basis ``B`` (``n × d``, orthonormal columns, usually the modules' joint row
space): its Grams are then ``Bᵀ G B`` (``d × d``) and the solvers stay inside ``span B``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from eigenmix.errors import InvalidInputError

Kind = Literal["own", "merged"]


@dataclass(frozen=True)
class LayerGrams:
    """One layer's input statistics, per task.

    Attributes:
        grams: per member module (the engine's ``LayerInput.members`` order), its Gram
            ``Σ_t x_t x_tᵀ`` (``(d, d)`` float64, summed over its tokens).
        tokens: per member, the number of tokens summed.
        others: ``(module index, Gram, tokens)`` of the modules that lack this layer (their
            task's inputs still reach it; their target there is the base layer).
        basis: ``(n, d)`` orthonormal basis the Grams are given in (a sketch), or None
            (full ``n × n`` Grams).
        diagonals: with a basis, each task's full Gram's diagonal ``(n,)`` (members, then
            the others), so RegMean's shrinkage of off-diagonal entries stays that of the
            full Gram; None: the sketched Gram's own diagonal is used.
    """

    grams: list[Tensor]
    tokens: list[int]
    others: list[tuple[int, Tensor, int]] = field(default_factory=list)
    basis: Tensor | None = None
    diagonals: list[Tensor] | None = None

    def check(self, layer: str, n_in: int) -> None:
        """One :class:`InvalidInputError` line for statistics that cannot be this layer's."""
        d = n_in if self.basis is None else self.basis.shape[1]
        if self.basis is not None and self.basis.shape[0] != n_in:
            raise InvalidInputError(f"layer '{layer}': the sketch basis has {self.basis.shape[0]} rows; the layer has {n_in} inputs")
        for G, _ in self.all("sum"):
            if tuple(G.shape) != (d, d):
                raise InvalidInputError(f"layer '{layer}': a Gram of shape {tuple(G.shape)}; the layer's inputs need ({d}, {d})")
            diagonal = torch.diagonal(G)
            if bool((diagonal < 0).any()) or not bool((diagonal > 0).any()):
                what = "has a negative diagonal" if bool((diagonal < 0).any()) else "is zero"
                raise InvalidInputError(f"layer '{layer}': a Gram that {what} is no Gram of inputs (Σ x xᵀ)")

    def mean(self, i: int) -> Tensor:
        """Member ``i``'s per-token mean Gram (RegMean's reference code averages over tokens)."""
        return self.grams[i] / max(self.tokens[i], 1)

    def all(self, normalize: Literal["mean", "sum"]) -> list[tuple[Tensor, float]]:
        """Every task's Gram, members first then the others, with the factor that makes it a
        per-token mean (``"mean"``) or keeps the sum (``"sum"``): ``(G, c)`` stands for ``c G``
        (no copy of an ``n × n`` matrix)."""
        pairs = list(zip(self.grams, self.tokens, strict=True)) + [(g, n) for _, g, n in self.others]
        return [(g, 1.0 / max(n, 1) if normalize == "mean" else 1.0) for g, n in pairs]

    def to_rows(self, Q: Tensor) -> Tensor:
        """Coordinates of the columns of ``Q`` (``(n, r)``) in the Grams' basis (``(d, r)``, float64)."""
        Q = Q.to(torch.float64)
        return Q if self.basis is None else self.basis.T @ Q

    def from_rows(self, C: Tensor) -> Tensor:
        """Columns given in the Grams' basis (``(d, r)``) back in input space (``(n, r)``)."""
        return C if self.basis is None else self.basis @ C


@runtime_checkable
class GramSource(Protocol):
    """Where a calibrated merge gets each layer's statistics.

    ``kind`` says which inputs they are; ``order`` sorts the layers the way the source needs
    them merged (a ``"merged"`` source: the model's order); ``layer`` gives one layer's
    :class:`LayerGrams` for the modules ``members`` (indices into the merge's modules);
    ``merged`` tells the source a layer's merged delta (at scale 1), which a ``"merged"``
    source feeds into the next blocks' passes."""

    kind: Kind

    def order(self, layers: Sequence[str]) -> list[str]: ...

    def layer(self, name: str, members: Sequence[int]) -> LayerGrams: ...

    def merged(self, name: str, delta: object) -> None: ...

    def reset(self) -> None: ...


class Grams:
    """Fixed statistics: ``grams[k][layer]`` is module k's Gram ``Σ_t x_t x_tᵀ`` at ``layer``
    (``(n, n)``, or ``(d, d)`` in ``bases[layer]``), over ``tokens[k][layer]`` tokens.

    Every module must have a Gram at every layer it is merged at; a module that lacks a
    layer may still give one (it enters the summed Gram as a task whose target there is the
    base layer). Token counts default to 1 (Grams given as per-token means). ``kind`` says
    whose inputs they are (``"merged"``: statistics of the merged model you took yourself).
    """

    def __init__(
        self,
        grams: Sequence[Mapping[str, Tensor]],
        tokens: Sequence[Mapping[str, int]] | None = None,
        bases: Mapping[str, Tensor] | None = None,
        kind: Kind = "own",
        diagonals: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> None:
        self.kind: Kind = kind
        self.diagonals = [dict(d) for d in diagonals] if diagonals is not None else None
        self.grams = [dict(g) for g in grams]
        self.tokens = [dict(t) for t in tokens] if tokens is not None else [dict.fromkeys(g, 1) for g in self.grams]
        if len(self.tokens) != len(self.grams):
            raise InvalidInputError(f"{len(self.tokens)} token counts for {len(self.grams)} modules' Grams")
        self.bases = dict(bases or {})
        for k, per_layer in enumerate(self.grams):
            for layer, g in per_layer.items():
                if g.ndim != 2 or g.shape[0] != g.shape[1]:
                    raise InvalidInputError(f"module {k}, layer '{layer}': a Gram must be square; got {tuple(g.shape)}")
                if not bool(torch.isfinite(g).all()):
                    raise InvalidInputError(f"module {k}, layer '{layer}': the Gram is not finite")

    def order(self, layers: Sequence[str]) -> list[str]:
        return list(layers)

    def layer(self, name: str, members: Sequence[int]) -> LayerGrams:
        missing = [k for k in members if k >= len(self.grams) or name not in self.grams[k]]
        if missing:
            raise InvalidInputError(f"no calibration Gram for module {missing[0]} at layer '{name}'")
        others = [(k, g[name].double(), self.tokens[k].get(name, 1)) for k, g in enumerate(self.grams) if k not in members and name in g]
        diagonals = None
        if self.diagonals is not None and name in self.bases:
            order = [*members, *(k for k, _, _ in others)]
            diagonals = [self.diagonals[k][name].double() for k in order]
        grams = [self.grams[k][name].double() for k in members]
        return LayerGrams(grams, [self.tokens[k].get(name, 1) for k in members], others, self.bases.get(name), diagonals)

    def merged(self, name: str, delta: object) -> None:
        """Fixed statistics do not depend on the merge."""

    def reset(self) -> None:
        """Nothing to reset."""


def check_source(method: str, needs: Kind | None, source: object, n_modules: int) -> GramSource | None:
    """The calibration a plan runs with: refused where the method needs none, or needs
    another kind, or for another number of modules (one :class:`InvalidInputError` line)."""
    if needs is None:
        if source is not None:
            raise InvalidInputError(f"method '{method}' uses no calibration data; drop the calibration")
        return None
    if source is None:
        raise InvalidInputError(
            f"method '{method}' needs calibration data: a 'calibration:' section in the config "
            "(rows per module), or calibration= from Python (eigenmix.compose.gram_statistics)"
        )
    if not isinstance(source, GramSource):
        kind = type(source).__name__
        raise InvalidInputError(f"calibration= must be Grams or a GramSource (eigenmix.compose.gram_statistics); got {kind}")
    if needs != source.kind:
        fix = "MergedGrams(model, modules, batches)" if needs == "merged" else "gram_statistics(model, modules, batches) or OwnGrams(…)"
        raise InvalidInputError(
            f"method '{method}' takes the {'merged' if needs == 'merged' else 'own'} model's inputs; "
            f"the calibration holds the {source.kind} model's: calibration={fix}"
        )
    count = getattr(source, "n_modules", None) or (len(source.grams) if isinstance(source, Grams) else None)
    if count is not None and count != n_modules:
        raise InvalidInputError(f"the calibration has statistics for {count} module(s); the merge has {n_modules}")
    return source
