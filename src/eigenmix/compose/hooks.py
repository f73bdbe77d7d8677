"""The one hook mechanism of live compositions: a target ``nn.Linear`` of a frozen model
gets a forward hook that changes its output (:func:`on_output`), most often by adding
``update(x)`` (:func:`add_to_output`: ``y = W0 x + b + update(x)``).
The model is not modified; removing the hook gives it back unchanged."""

from __future__ import annotations

from collections.abc import Callable, Collection

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from eigenmix.errors import InvalidInputError


def linear_at(model: nn.Module, name: str, shape: tuple[int, int]) -> nn.Linear:
    """The ``nn.Linear`` called ``name`` in ``model``, checked to be ``(out, in) = shape``."""
    try:
        linear = model.get_submodule(name)
    except AttributeError as err:
        raise InvalidInputError(f"the model has no layer '{name}'") from err
    if not isinstance(linear, nn.Linear):
        raise InvalidInputError(f"layer '{name}' of the model is a {type(linear).__name__}, not an nn.Linear")
    if tuple(linear.weight.shape) != tuple(shape):
        have = tuple(linear.weight.shape)
        raise InvalidInputError(f"layer '{name}': the module's update is {tuple(shape)} (out, in), the model's nn.Linear is {have}")
    return linear


def on_output(model: nn.Module, name: str, shape: tuple[int, int], change: Callable[[Tensor, Tensor], Tensor]) -> RemovableHandle:
    """Hook ``change(x, y) → y'`` onto the linear ``name``: its output ``y`` for input ``x``
    becomes ``y'`` (which may be ``y`` itself, changed in place)."""
    return linear_at(model, name, shape).register_forward_hook(lambda _, inputs, out: change(inputs[0], out))


def add_to_output(model: nn.Module, name: str, shape: tuple[int, int], update: Callable[[Tensor], Tensor]) -> RemovableHandle:
    """Hook ``update(x)`` (``(…, n) → (…, m)``) onto the linear ``name``'s output."""
    return on_output(model, name, shape, lambda x, out: out + update(x))


def first_routed_layer(model: nn.Module, layers: Collection[str]) -> str:
    """The first of ``layers`` in ``model``'s module order (where a transformer runs it
    first): the layer at which a once-per-sequence router decides."""
    for name, _ in model.named_modules():
        if name in layers:
            return name
    raise InvalidInputError(f"the model has none of the layers {sorted(layers)[:3]}…")
