"""Continual merging: one more module folded into an earlier merge, from the state stored
beside it, without the earlier modules' files.

A method that can do this declares a :class:`Continual`: how one module's layer is folded
into the layer's state (``step``), an optional pass over all layers after each module
(``rescale``: OPCM's λ_t), and how the written delta follows from the state (``output``).
States are exact: per matrix layer an SVD in float64 (never truncated, whatever
``output.rank`` says; a conv kernel's of its matrix view, its kernel shape kept beside),
per vector layer a float64 tensor.

- ``task_arithmetic`` and ``linear`` keep ``S = Σ_k w_k ΔW_k`` and write ``scale · S`` (divided
  by ``Σ_k w_k`` with ``normalize``): folding module by module equals merging all at once.
- ``opcm`` is sequential: its all-at-once merge folds the modules in, in order.

On disk, beside a merged adapter: ``merge_state.safetensors`` (``<layer>.U/.S/.V`` or
``<layer>.W``) and ``merge_state.json`` (method, parameters, modules, weights, the method's
running numbers).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from eigenmix.errors import InvalidInputError, ShapeMismatchError
from eigenmix.io.safetensors_io import read_safetensors
from eigenmix.merging.registry import MergeMethod, MergeParams, get_method
from eigenmix.modules import AnyDelta, DenseDelta, Module, SpectralDelta, factor_pair, with_kernel
from eigenmix.spectral import SVD, decompose, default_rtol, factored_svd, numerical_rank

Layer = SVD | Tensor
STATE_FILE, STATE_INDEX = "merge_state.safetensors", "merge_state.json"
FORMAT, VERSION = "eigenmix-merge-state", 1
RTOL = default_rtol(torch.float64)


@dataclass(frozen=True)
class Continual:
    """How a method folds one module into a stored state (see the module docstring).

    Attributes:
        step: ``(state or None, delta, weight, params, info) → state`` for one layer.
        output: ``(state, params, info, weights) → state``: what is written.
        rescale: ``(states, info, params) → (states, info)`` after each module (all layers).
        sequential: its all-at-once merge is this fold, module by module.
    """

    step: Callable[[Layer | None, AnyDelta, float, Any, dict[str, Any]], Layer]
    output: Callable[[Layer, Any, dict[str, Any], Sequence[float]], Layer]
    rescale: Callable[[dict[str, Layer], dict[str, Any], Any], tuple[dict[str, Layer], dict[str, Any]]] | None = None
    sequential: bool = False


@dataclass(frozen=True)
class MergeState:
    """A merge that more modules can be folded into."""

    method: str
    params: dict[str, Any]
    modules: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    layers: dict[str, Layer] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None
    fan_in_fan_out: bool = False
    kernels: dict[str, tuple[int, ...]] = field(default_factory=dict)  # conv layers' kernel shapes

    @property
    def spec(self) -> MergeMethod:
        return get_method(self.method)

    @property
    def parsed(self) -> MergeParams:
        return self.spec.parse_params(self.params)


# --- exact operations on layer states (float64) ---------------------------------------


def as_layer(delta: AnyDelta, weight: float = 1.0) -> Layer:
    """``weight · delta`` as a state: an exact SVD (matrices) or a tensor (vectors)."""
    if isinstance(delta, DenseDelta) and not delta.is_matrix:
        return weight * delta.W.to(torch.float64)
    L, R = factor_pair(delta)
    f = factored_svd(weight * L.to(torch.float64), R.to(torch.float64).T, dtype=torch.float64)
    return f.truncate(numerical_rank(f.S, RTOL))


def add_factors(state: SVD, L: Tensor, R: Tensor) -> SVD:
    """The exact SVD of ``state + L Rᵀ`` (one joint basis; no ``m × n`` matrix)."""
    layer = decompose([(state.U * state.S, state.V), (L.to(torch.float64), R.to(torch.float64))], [1.0, 1.0], RTOL)
    return layer.lift(layer.weighted_sum())


def add(state: Layer | None, delta: AnyDelta, weight: float) -> Layer:
    """``state + weight · delta``."""
    if state is None:
        return as_layer(delta, weight)
    if isinstance(state, Tensor):
        return state + weight * delta.dense().to(torch.float64)
    L, R = factor_pair(delta)
    return add_factors(state, weight * L, R)


def scaled(state: Layer, c: float) -> Layer:
    """``c · state`` (a negative ``c`` flips ``V``)."""
    if isinstance(state, Tensor):
        return c * state
    return SVD(state.U, state.S * abs(c), state.V if c >= 0 else -state.V)


def norm_sq(state: Layer) -> float:
    return float(state.S.square().sum()) if isinstance(state, SVD) else float(state.square().sum())


def delta_norm_sq(delta: AnyDelta) -> float:
    """``‖ΔW‖²`` without forming a low-rank ``ΔW``."""
    if isinstance(delta, DenseDelta):
        return float(delta.W.to(torch.float64).square().sum())
    L, R = (t.to(torch.float64) for t in factor_pair(delta))
    return float(((L.T @ L) * (R.T @ R)).sum())


def as_delta(state: Layer) -> AnyDelta:
    return SpectralDelta(*state) if isinstance(state, SVD) else DenseDelta(state)


# --- the sum methods ------------------------------------------------------------------


def sum_step(state: Layer | None, delta: AnyDelta, weight: float, p: Any, info: dict[str, Any]) -> Layer:
    return add(state, delta, weight)


def sum_output(state: Layer, p: Any, info: dict[str, Any], weights: Sequence[float]) -> Layer:
    divisor = float(sum(weights)) if getattr(p, "normalize", False) else 1.0
    return scaled(state, p.scale / divisor)


SUM = Continual(step=sum_step, output=sum_output)


# --- folding --------------------------------------------------------------------------


def fold(state: MergeState, module: Module, weight: float = 1.0, name: str | None = None) -> MergeState:
    """``state`` with one more module folded in (the state itself is not changed).

    Raises:
        InvalidInputError: a name already merged, another base model, or a method that cannot fold.
        ShapeMismatchError: a layer whose shape differs from the state's.
    """
    spec, p = state.spec, state.parsed
    if spec.continual is None:
        raise InvalidInputError(f"method '{state.method}' cannot fold modules into an earlier merge")
    name = name or module.name
    if name in state.modules:
        raise InvalidInputError(f"module '{name}' is already in this merge")
    if module.base_model and state.base_model and module.base_model != state.base_model:
        raise InvalidInputError(f"module '{name}' is for base model {module.base_model}; the merge is of {state.base_model}")
    for layer, delta in module.layers.items():
        kernel = getattr(delta, "kernel", None)
        if layer in state.layers and (_shape(state.layers[layer]) != tuple(delta.shape) or state.kernels.get(layer) != kernel):
            had = state.kernels.get(layer) or _shape(state.layers[layer])
            raise ShapeMismatchError(f"module '{name}': layer '{layer}' has shape {tuple(delta.tensor_shape)}, the merge's {had}")
    info = dict(state.info)
    layers = dict(state.layers)
    kernels = dict(state.kernels)
    for layer, delta in module.layers.items():
        layers[layer] = spec.continual.step(layers.get(layer), delta, weight, p, info)
        kernel = getattr(delta, "kernel", None)
        if kernel is not None:
            kernels[layer] = kernel
    info["steps"] = int(info.get("steps", 0)) + 1
    if spec.continual.rescale is not None:
        info["module_norm"] = abs(weight) * sum(delta_norm_sq(d) for d in module.layers.values()) ** 0.5
        layers, info = spec.continual.rescale(layers, info, p)
    return replace(
        state, modules=(*state.modules, name), weights=(*state.weights, float(weight)), layers=layers, info=info,
        base_model=state.base_model or module.base_model, fan_in_fan_out=state.fan_in_fan_out or module.fan_in_fan_out,
        kernels=kernels,
    )  # fmt: skip


def _shape(state: Layer) -> tuple[int, ...]:
    return (int(state.U.shape[0]), int(state.V.shape[0])) if isinstance(state, SVD) else tuple(state.shape)


def start(method: str, params: MergeParams | dict[str, Any] | None = None) -> MergeState:
    """An empty state for ``method`` (its parameters validated)."""
    spec = get_method(method)
    parsed = params if isinstance(params, MergeParams) else spec.parse_params(params)
    return MergeState(method, parsed.model_dump(mode="json"))


def fold_all(modules: Sequence[Module], method: str, params: MergeParams | dict[str, Any] | None, weights: Sequence[float]) -> MergeState:
    """Fold ``modules`` in, in order, from an empty state."""
    state = start(method, params)
    for module, w in zip(modules, weights, strict=True):
        state = fold(state, module, w)
    return state


def outputs(state: MergeState) -> Iterator[tuple[str, AnyDelta]]:
    """The deltas to write, layer by layer."""
    spec, p = state.spec, state.parsed
    assert spec.continual is not None
    for layer, s in state.layers.items():
        yield layer, with_kernel(as_delta(spec.continual.output(s, p, state.info, state.weights)), state.kernels.get(layer))


def from_merged(
    method: str, params: MergeParams, modules: Sequence[str], weights: Sequence[float], merged: dict[str, AnyDelta], **kw: Any
) -> MergeState:
    """The state of an all-at-once ``task_arithmetic`` / ``linear`` merge, from its result:
    ``S = merged / scale`` (times ``Σ w`` with ``normalize``)."""
    factor = (float(sum(weights)) if getattr(params, "normalize", False) else 1.0) / params.scale
    layers = {layer: scaled(as_layer(d), factor) for layer, d in merged.items()}
    kernels = {layer: d.kernel for layer, d in merged.items() if getattr(d, "kernel", None) is not None}
    return MergeState(
        method, params.model_dump(mode="json"), tuple(modules), tuple(float(w) for w in weights), layers, {"steps": len(modules)},
        kernels=kernels, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


# --- on disk --------------------------------------------------------------------------


def save_state(state: MergeState, folder: Path) -> None:
    """Write ``merge_state.safetensors`` and ``merge_state.json`` into ``folder``."""
    tensors: dict[str, Tensor] = {}
    for layer, s in state.layers.items():
        if isinstance(s, SVD):
            tensors[f"{layer}.U"], tensors[f"{layer}.S"], tensors[f"{layer}.V"] = (t.contiguous() for t in s)
        else:
            tensors[f"{layer}.W"] = s.contiguous()
    save_file(tensors, str(folder / STATE_FILE), metadata={"format": FORMAT})
    index = {
        "format": FORMAT, "version": VERSION, "method": state.method, "params": state.params, "modules": list(state.modules),
        "weights": list(state.weights), "info": state.info, "base_model": state.base_model, "fan_in_fan_out": state.fan_in_fan_out,
        "layers": list(state.layers), "kernels": {layer: list(k) for layer, k in state.kernels.items()},
    }  # fmt: skip
    (folder / STATE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def load_state(folder: Path) -> MergeState:
    """Read the state beside a merged adapter (every problem is one line)."""
    path = folder / STATE_INDEX
    if not path.is_file():
        raise InvalidInputError(
            f"{folder}: has no {STATE_INDEX}; only a task_arithmetic, linear or opcm adapter that eigenmix wrote can be continued"
        )
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise InvalidInputError(f"{path}: not an eigenmix merge state (version {VERSION})")
    try:
        method, params, modules, weights, names = index["method"], index["params"], index["modules"], index["weights"], index["layers"]
    except KeyError as err:
        raise InvalidInputError(f"{path}: lacks '{err.args[0]}'") from None
    get_method(method).parse_params(params)
    tensors = read_safetensors(folder / STATE_FILE)
    layers: dict[str, Layer] = {}
    for layer in names:
        if f"{layer}.W" in tensors:
            layers[layer] = tensors[f"{layer}.W"].to(torch.float64)
            continue
        try:
            U, S, V = (tensors[f"{layer}.{x}"].to(torch.float64) for x in "USV")
        except KeyError as err:
            raise InvalidInputError(f"{folder / STATE_FILE}: lacks {err.args[0]}") from None
        if U.ndim != 2 or V.ndim != 2 or S.ndim != 1 or not (U.shape[1] == V.shape[1] == S.shape[0]):
            raise InvalidInputError(
                f"{folder / STATE_FILE}: layer '{layer}' has U {tuple(U.shape)}, S {tuple(S.shape)}, V {tuple(V.shape)}"
            )
        layers[layer] = SVD(U, S, V)
    if len(modules) != len(weights):
        raise InvalidInputError(f"{path}: {len(modules)} modules but {len(weights)} weights")
    kernels = _kernels(index.get("kernels") or {}, layers, path)
    return MergeState(
        method, params, tuple(modules), tuple(float(w) for w in weights), layers, dict(index.get("info") or {}),
        index.get("base_model"), bool(index.get("fan_in_fan_out", False)), kernels,
    )  # fmt: skip


def _kernels(given: Any, layers: dict[str, Layer], path: Path) -> dict[str, tuple[int, ...]]:
    """The conv layers' kernel shapes of a stored state, each checked against its layer."""
    if not isinstance(given, dict):
        raise InvalidInputError(f"{path}: 'kernels' is not a mapping of layer → kernel shape")
    kernels: dict[str, tuple[int, ...]] = {}
    for layer, shape in given.items():
        if layer not in layers or not isinstance(shape, list) or not all(isinstance(x, int) for x in shape):
            raise InvalidInputError(f"{path}: kernel entry '{layer}' names no stored layer or is no list of sizes")
        try:
            with_kernel(as_delta(layers[layer]), tuple(shape))
        except ValueError as err:
            raise InvalidInputError(f"{path}: layer '{layer}': {err}") from None
        kernels[layer] = tuple(shape)
    return kernels
