"""One registry of training kinds: how a module is parametrised while it trains.

A kind turns one frozen weight ``W`` ``(m, n)`` (a conv kernel's matrix view
``(out, in·kh·kw)``) into a :class:`KindLayer`: trainable parameters plus frozen buffers
whose :meth:`~KindLayer.factors` give the layer's update ``ΔW = B A`` at any moment. The
model itself is never changed: the update is added to the layer's output through the one
hook mechanism (:mod:`eigenmix.compose.hooks`), and what is saved is ``(B, A)`` — a PEFT
LoRA adapter of rank ``B.shape[1]`` with scale 1 — so every kind merges, routes, explains
and loads in PEFT like any adapter. ``@register`` rejects a duplicate name; a name is
checked against the registry before any work starts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from eigenmix.errors import InvalidInputError, did_you_mean


class KindParams(BaseModel):
    """Parameters every kind has. Subclass per kind; help text is written once here."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)

    r: int = Field(8, ge=1, description="rank of the trained update per layer (the number of singular directions it touches)")
    lr_ratio: float = Field(1.0, gt=0, description="learning rate of the kind's trained numbers, as a multiple of the recipe's lr")


@dataclass(frozen=True)
class LayerBasis:
    """The directions a library's modules already use at one layer: orthonormal columns
    ``Q_out`` ``(m, c)`` spanning their updates' column spaces and ``Q_in`` ``(n, c')``
    their row spaces (see :func:`eigenmix.kinds.orthogonal.library_bases`)."""

    Q_out: Tensor
    Q_in: Tensor


@dataclass(frozen=True)
class LayerContext:
    """What a kind's layer gets beside the weight and the parameters."""

    generator: torch.Generator  # seeded per layer
    library: LayerBasis | None = None  # the library to stay orthogonal to, at this layer


class KindLayer(nn.Module, ABC):
    """A layer's trainable form: ``factors()`` is its current update ``ΔW = B A``, with
    ``B`` ``(m, k)`` and ``A`` ``(k, n)``, differentiable in the trainable parameters."""

    @abstractmethod
    def factors(self) -> tuple[Tensor, Tensor]: ...

    def keep_top_singular(self, W: Tensor, k: int | None) -> int:
        """Keep ``W``'s top ``k`` (default all) singular triplets as float32 buffers ``U``
        ``(m, k)``, ``S`` ``(k,)``, ``V`` ``(n, k)`` (an SVD in float64); returns ``k``."""
        U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
        k = min(k or len(S), len(S))
        self.register_buffer("U", U[:, :k].float())
        self.register_buffer("S", S[:k].float())
        self.register_buffer("V", Vh[:k].T.float())
        return k


@dataclass(frozen=True)
class TrainKind:
    """A registered training kind.

    Attributes:
        name: registry key, used in configs and on the command line.
        layer: ``layer(W, params, ctx) → KindLayer`` for one frozen weight matrix ``W`` (float32).
        params: the pydantic model of its parameters, with the paper's defaults.
        description: one line.
        paper: title, authors, venue (None for plain LoRA's variants of eigenmix's own).
        url: link to the paper.
        saved_rank: the rank of the saved LoRA, in words (``"r"``, ``"2r"``, ``"min(m, n)"``).
        needs_library: the kind trains against a library of earlier modules.
    """

    name: str
    layer: Callable[[Tensor, KindParams, LayerContext], KindLayer]
    params: type[KindParams]
    description: str
    paper: str | None
    url: str | None
    saved_rank: str
    needs_library: bool = False

    def parse_params(self, raw: dict | None) -> KindParams:
        """Validate user parameters against this kind's model (one line for all problems)."""
        from pydantic import ValidationError

        try:
            return self.params.model_validate(raw or {})
        except ValidationError as err:
            problems = [f"kind '{self.name}', parameter '{'.'.join(map(str, e['loc'])) or 'parameters'}': {e['msg']}" for e in err.errors()]
            raise InvalidInputError("; ".join(problems) + f" (its parameters: {', '.join(self.params.model_fields)})") from None


_KINDS: dict[str, TrainKind] = {}


def register(kind: TrainKind) -> TrainKind:
    if kind.name in _KINDS:
        raise ValueError(f"training kind '{kind.name}' is registered twice")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> TrainKind:
    """The kind called ``name``, or one line naming the choices (importing
    :mod:`eigenmix.kinds` registers the built-in kinds)."""
    if name not in _KINDS:
        raise InvalidInputError(f"unknown training kind '{name}'{did_you_mean(name, _KINDS)} (choose from {', '.join(sorted(_KINDS))})")
    return _KINDS[name]


def all_kinds() -> list[TrainKind]:
    """Every registered kind, by name."""
    return [_KINDS[n] for n in sorted(_KINDS)]
