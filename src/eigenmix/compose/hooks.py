"""The one hook mechanism of live compositions: a target layer of a frozen model — a
:class:`~eigenmix.compose.sites.Site` (``nn.Linear``, or an ``nn.Conv1d/2d``) — gets a
forward hook that changes its output (:func:`on_output`), most often by adding ``update(x)``
(:func:`add_to_output`: ``y = W0 x + b + update(x)``), or that reads its input
(:func:`on_input`). The hooked functions see rows: the input ``(batch, tokens, n)``, the
output ``(batch, tokens, m)`` (a conv's unfolded patches and per-position channels).
The model is not modified; removing the hook gives it back unchanged.

:func:`stop_after` ends a forward pass after any submodule (a block, not a site: it reads no
rows), so a pass that needs only the first blocks computes no more. Every forward hook of
the package is registered here."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from eigenmix.compose.sites import Site, site_at
from eigenmix.errors import InvalidInputError


def on_output(model: nn.Module, name: str, shape: tuple[int, ...], change: Callable[[Tensor, Tensor], Tensor]) -> RemovableHandle:
    """Hook ``change(x, y) → y'`` onto the site ``name``: its output rows ``y``
    ``(batch, tokens, m)`` for input rows ``x`` ``(batch, tokens, n)`` become ``y'`` (which may
    be ``y`` itself, changed in place)."""
    site = site_at(model, name, shape)

    def hook(_: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
        return site.back(change(site.rows(inputs[0]), site.out_rows(out)), out)

    return model.get_submodule(name).register_forward_hook(hook)


def on_input(model: nn.Module, name: str, shape: tuple[int, ...], read: Callable[[Tensor], None]) -> RemovableHandle:
    """Hook ``read(x)`` onto the site ``name``: it sees the input rows ``(batch, tokens, n)``
    and leaves the output alone."""
    site: Site = site_at(model, name, shape)

    def hook(_: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:  # None: the output is kept
        read(site.rows(inputs[0]))

    return model.get_submodule(name).register_forward_hook(hook)


def add_to_output(model: nn.Module, name: str, shape: tuple[int, ...], update: Callable[[Tensor], Tensor]) -> RemovableHandle:
    """Hook ``update(x)`` (rows ``(batch, tokens, n) → (batch, tokens, m)``) onto the site ``name``'s output."""
    return on_output(model, name, shape, lambda x, out: out + update(x))


class StopPass(Exception):
    """Raised by :func:`stop_after`'s hook to end a forward pass (its caller suppresses it)."""


def stop_after(model: nn.Module, name: str) -> RemovableHandle:
    """Hook onto the submodule ``name`` (any module) that raises :class:`StopPass` once it
    has run: the modules after it are not computed."""

    def hook(*_: Any) -> None:
        raise StopPass

    return model.get_submodule(name).register_forward_hook(hook)


def first_routed_layer(model: nn.Module, layers: Collection[str]) -> str:
    """The first of ``layers`` in ``model``'s module order (where a transformer runs it
    first): the layer at which a once-per-sequence router decides."""
    for name, _ in model.named_modules():
        if name in layers:
            return name
    raise InvalidInputError(f"the model has none of the layers {sorted(layers)[:3]}…")
