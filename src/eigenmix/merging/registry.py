"""One registry of merge methods: ``@register(...)`` rejects duplicate names, and a
method name is checked against it before any work starts.

Two kinds of method:

- ``spectral``: basis-invariant; runs on the joint-basis decomposition of a layer
  (:class:`eigenmix.spectral.LayerSpectra`) and never forms an ``m × n`` matrix.
- ``elementwise``: acts on individual weight entries (trim, drop, elect sign), which
  depends on the coordinate basis; forms the dense deltas of one layer at a time.

Every method also declares how it merges tensors that are not matrices (biases, norms),
since a spectral rule has no meaning there (``vectors``):

- ``"sum"``: ``scale · Σ_k w_k v_k`` (Task Arithmetic, plain ``linear``);
- ``"mean"``: ``scale · Σ_k w_k v_k / K`` (the reference code of TSV-M and Iso-C/-CTS averages
  every non-matrix tensor, then applies α; STAR averages everything);
- ``"weighted_mean"``: ``scale · Σ_k w_k v_k / Σ_k w_k`` (``linear`` with ``normalize``);
- ``"method"``: the method's own function handles them (element-wise methods: TIES, DARE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from eigenmix.errors import InvalidInputError, did_you_mean
from eigenmix.merging.statistics import Kind as CalibrationKind
from eigenmix.merging.statistics import LayerGrams

Kind = Literal["spectral", "elementwise"]
VectorRule = Literal["sum", "mean", "weighted_mean", "method"]


class MergeParams(BaseModel):
    """Parameters every method has. Subclass per method; help text is written once here."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)  # strict: no "0.3" or true for a number

    scale: float = Field(1.0, description="global scaling of the merged delta (α / λ of the papers)")


@dataclass(frozen=True)
class LayerContext:
    """What a per-layer function gets beside its inputs and parameters.

    Attributes:
        rng: seeded per layer (bit-identical re-runs, independent of the layer order).
        thresholds: ``(K,)`` per-module magnitude thresholds from the first pass of a
            ``trim: global`` method (None otherwise).
        grams: the layer's calibration statistics, for a method that declares
            ``calibration`` (None otherwise).
    """

    rng: torch.Generator
    thresholds: torch.Tensor | None = None
    grams: LayerGrams | None = None


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    Attributes:
        name: registry key, used in configs and on the command line.
        fn: the per-layer function: ``fn(layer: LayerSpectra, params, ctx)`` (spectral) or
            ``fn(deltas (K, *shape), weights (K,), params, ctx)`` (element-wise); for a
            sequential method, its fold step (``continual.step``).
        params: the pydantic model of its parameters, with the paper's defaults.
        kind: ``"spectral"`` or ``"elementwise"``.
        description: one line.
        paper: title, authors, venue.
        url: link to the paper (None for eigenmix's own method).
        vectors: the rule for non-matrix tensors, or a function of the parameters giving it.
        trim_values: for methods with ``trim: global``: the values of one layer that the
            global top-k runs over, per module (same arguments as ``fn``, the same
            ``ctx.rng`` draws).
        keep_count: for ``trim: global``: how many of a module's ``N`` values the top-k keeps.
        continual: for methods that can fold one more module into an earlier result
            (:class:`eigenmix.merging.continual.Continual`); a ``sequential`` one merges
            all at once by folding the modules in, in order (OPCM).
        linear_map: its matrices merge by its vector rule too (a fixed linear combination of
            the deltas: ``linear``, ``task_arithmetic``), so dense deltas are summed directly,
            with no SVD.
        calibration: the layer-input statistics the method needs (``"own"``: each task's
            inputs to its own model; ``"merged"``: to the merged model's earlier blocks),
            or None (:mod:`eigenmix.merging.statistics`).
    """

    name: str
    fn: Callable[..., Any]
    params: type[MergeParams]
    kind: Kind
    description: str
    paper: str
    url: str | None
    vectors: VectorRule | Callable[[Any], VectorRule] = "sum"
    trim_values: Callable[..., list[torch.Tensor]] | None = None
    keep_count: Callable[[int, Any], int] | None = None
    continual: Any = None  # eigenmix.merging.continual.Continual: folds one more module into a stored state
    calibration: CalibrationKind | None = None
    linear_map: bool = False

    @property
    def sequential(self) -> bool:
        """Whether its all-at-once merge folds whole modules in, in order (OPCM), so it has
        no merge of one layer (:func:`eigenmix.merging.engine.sequential_state`)."""
        return self.continual is not None and bool(self.continual.sequential)

    def vector_rule(self, params: MergeParams) -> VectorRule:
        return self.vectors(params) if callable(self.vectors) else self.vectors

    def trims_globally(self, params: MergeParams) -> bool:
        """Whether a first pass over the whole model must find per-module thresholds (the
        parameters say so with a ``trims_globally`` property)."""
        return self.trim_values is not None and bool(getattr(params, "trims_globally", False))

    def parse_params(self, raw: dict[str, Any] | None) -> MergeParams:
        """Validate user parameters against this method's model (one line for all problems)."""
        from pydantic import ValidationError

        try:
            return self.params.model_validate(raw or {})
        except ValidationError as err:
            problems = []
            for e in err.errors():
                where = ".".join(str(p) for p in e["loc"]) or "parameters"
                if e["type"] == "extra_forbidden":
                    problems.append(f"method '{self.name}' has no parameter '{where}'{did_you_mean(where, self.params.model_fields)}")
                else:
                    problems.append(f"method '{self.name}', parameter '{where}': {e['msg']}")
            known = ", ".join(self.params.model_fields)
            raise InvalidInputError("; ".join(problems) + f" (its parameters: {known})") from None


_REGISTRY: dict[str, MergeMethod] = {}


def register(
    name: str,
    *,
    params: type[MergeParams],
    kind: Kind,
    description: str,
    paper: str,
    url: str | None,
    vectors: VectorRule | Callable[[Any], VectorRule] | None = None,
    trim_values: Callable[..., list[torch.Tensor]] | None = None,
    keep_count: Callable[[int, Any], int] | None = None,
    continual: Any = None,
    calibration: CalibrationKind | None = None,
    linear_map: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class-free registration of a per-layer merge function under ``name``.

    ``vectors`` defaults to ``"method"`` for element-wise methods and ``"sum"`` otherwise."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"merge method '{name}' is already registered")
        rule = vectors if vectors is not None else ("method" if kind == "elementwise" else "sum")
        _REGISTRY[name] = MergeMethod(
            name, fn, params, kind, description, paper, url, rule, trim_values, keep_count, continual, calibration, linear_map
        )
        return fn

    return decorate


def get_method(name: str) -> MergeMethod:
    """The method registered as ``name``; :class:`InvalidInputError` lists the known ones.
    (Importing :mod:`eigenmix.merging` registers the built-in methods.)"""
    if name not in _REGISTRY:
        raise InvalidInputError(f"unknown merge method '{name}'{did_you_mean(name, _REGISTRY)} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def all_methods() -> list[MergeMethod]:
    """Every registered method, sorted by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
