"""A merge parsed once: the method, its checked parameters, the weights and the engine's
settings. The API, the config file and the CLI's dry run all build one :class:`MergePlan`
and hand it on; nothing downstream re-validates it. :class:`Executor` is what runs a plan's
layers elsewhere (the engine takes one; ``merging/executor.py`` has Ray's)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from eigenmix.errors import InvalidInputError
from eigenmix.merging.registry import MergeMethod, MergeParams, get_method
from eigenmix.merging.statistics import GramSource, check_source
from eigenmix.modules import AnyDelta, Module

Done = tuple[str, AnyDelta, float]  # layer, merged delta, seconds


@dataclass(frozen=True)
class MergePlan:
    """Everything that decides a merge's numbers, checked.

    Attributes:
        method: the registered method.
        params: its parameters, validated against its model.
        weights: one per module, finite, not all zero.
        seed: seeds the random methods, per layer.
        dense_rank: randomized-SVD rank for dense task vectors (exact SVD when None).
        dense_energy: share of each dense delta's energy kept by spectral methods.
        calibration: where a calibrated method gets each layer's input statistics.
    """

    method: MergeMethod
    params: MergeParams
    weights: tuple[float, ...]
    seed: int = 0
    dense_rank: int | None = None
    dense_energy: float = 1.0
    calibration: GramSource | None = None

    def summary(self) -> dict[str, Any]:
        """What a report records of the plan."""
        return {
            "method": self.method.name, "params": self.params.model_dump(mode="json"), "weights": list(self.weights),
            "seed": self.seed, "dense_rank": self.dense_rank, "dense_energy": self.dense_energy,
        }  # fmt: skip


class Executor(Protocol):
    """Runs the engine's ``merge_layer`` over the layers of a plan elsewhere, yielding
    ``(layer, delta, seconds)`` in order."""

    def run(self, modules: Sequence[Module], plan: MergePlan, layers: Sequence[str], thresholds: Tensor | None) -> Iterator[Done]: ...


def check_weights(weights: Sequence[float], method: MergeMethod, params: MergeParams) -> tuple[float, ...]:
    """Weights a merge can use: finite, not all zero, and with a non-zero sum where the
    method divides by it. One :class:`InvalidInputError` line otherwise."""
    weights = tuple(float(w) for w in weights)
    bad = [i for i, w in enumerate(weights) if not math.isfinite(w)]
    if bad:
        raise InvalidInputError(f"modules.{bad[0]}.weight is {weights[bad[0]]}: weights must be finite numbers")
    if not any(weights):
        raise InvalidInputError("every module weight is 0: the merge would be empty")
    if params.scale == 0:
        raise InvalidInputError(f"method '{method.name}' with scale 0: the merge would be empty")
    if method.vector_rule(params) == "weighted_mean" and sum(weights) == 0:
        raise InvalidInputError(f"method '{method.name}' divides by the sum of the weights (normalize), which is 0")
    return weights


def make_plan(
    method: str | MergeMethod,
    n_modules: int,
    *,
    weights: Sequence[float] | None = None,
    params: MergeParams | dict[str, Any] | None = None,
    seed: int = 0,
    dense_rank: int | None = None,
    dense_energy: float = 1.0,
    calibration: object = None,
) -> MergePlan:
    """Check a merge before any work: the method, its parameters, the weights, and the
    calibration statistics a calibrated method needs (refused for the others)."""
    spec = get_method(method) if isinstance(method, str) else method
    parsed = params if isinstance(params, MergeParams) else spec.parse_params(params)
    if n_modules < 1:
        raise InvalidInputError("merge needs at least one module")
    weights = [1.0] * n_modules if weights is None else list(weights)
    if len(weights) != n_modules:
        raise InvalidInputError(f"{len(weights)} weights for {n_modules} modules")
    if dense_rank is not None and dense_rank < 1:
        raise InvalidInputError(f"dense_rank must be at least 1; got {dense_rank}")
    if not 0 < dense_energy <= 1:
        raise InvalidInputError(f"dense_energy must be in (0, 1]; got {dense_energy}")
    source = check_source(spec.name, spec.calibration, calibration, n_modules)
    return MergePlan(spec, parsed, check_weights(weights, spec, parsed), seed, dense_rank, dense_energy, source)
