"""Sites: the layers of a live model whose update is ``ΔW x`` for some rows ``x``.

Everything live (hooks, the routed model, Grams, the explain recorder, tuning) is written
once against a :class:`Site`, which turns the layer's input into rows ``(batch, tokens, n)``
and its output into rows ``(batch, tokens, m)`` and back:

- ``nn.Linear`` ``(m, n)``: the rows are the input itself; ``tokens`` are a sequence's
  positions (a 2-D input is one token).
- ``nn.Conv1d`` / ``nn.Conv2d`` with ``groups == 1``, matrix view ``(out, in·∏k)``: the rows
  are the unfolded patches (``F.unfold``, in the weight's ``(in, kh, kw)`` order; a 1×1
  conv's are each pixel's channels) and ``tokens`` the output positions; the output rows
  are each position's channels.

Refused with one line: grouped or depthwise convs (their update is one matrix product per
group, not of the whole input), padding modes other than zeros, Conv3d, and any other layer
type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from eigenmix.errors import InvalidInputError
from eigenmix.modules import matrix_view


class Site(Protocol):
    """A layer as rows in, rows out."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``: the update's matrix (a conv kernel's matrix view)."""
        ...

    def rows(self, x: Tensor) -> Tensor:
        """The layer's input as rows ``(batch, tokens, n)``."""
        ...

    def out_rows(self, y: Tensor) -> Tensor:
        """The layer's output as rows ``(batch, tokens, m)`` (a view where the layout allows)."""
        ...

    def back(self, rows: Tensor, like: Tensor) -> Tensor:
        """Output rows ``(batch, tokens, m)`` in the shape of the layer's output ``like``."""
        ...


@dataclass(frozen=True)
class LinearSite:
    """An ``nn.Linear``: rows are the input's last axis."""

    name: str
    shape: tuple[int, int]

    def rows(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def out_rows(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], -1, y.shape[-1])

    def back(self, rows: Tensor, like: Tensor) -> Tensor:
        return rows.reshape(like.shape)


@dataclass(frozen=True)
class ConvSite:
    """A ``groups == 1`` ``nn.Conv2d`` (a Conv1d is a Conv2d of height 1): rows are unfolded patches."""

    name: str
    shape: tuple[int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    one_d: bool = False

    @property
    def pointwise(self) -> bool:
        return self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def rows(self, x: Tensor) -> Tensor:  # x: (batch, in, H, W) or (batch, in, L)
        if self.one_d:
            x = x.unsqueeze(2)
        if self.pointwise:
            return x.flatten(2).transpose(1, 2)  # (batch, H·W, in)
        patches = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        return patches.transpose(1, 2)  # (batch, H'·W', in·kh·kw)

    def out_rows(self, y: Tensor) -> Tensor:  # y: (batch, m, H', W') or (batch, m, L')
        return y.flatten(2).transpose(1, 2)

    def back(self, rows: Tensor, like: Tensor) -> Tensor:
        return rows.transpose(1, 2).reshape(like.shape)


def site_at(model: nn.Module, name: str, shape: tuple[int, ...]) -> Site:
    """The site called ``name`` in ``model``, checked against the update's ``shape``
    (``(m, n)``, or a conv kernel's shape or matrix view)."""
    try:
        layer = model.get_submodule(name)
    except AttributeError as err:
        raise InvalidInputError(f"the model has no layer '{name}'") from err
    if isinstance(layer, nn.Linear):
        view = tuple(shape)
        if view != tuple(layer.weight.shape):
            have = tuple(layer.weight.shape)
            raise InvalidInputError(f"layer '{name}': the module's update is {view} (out, in), the model's nn.Linear is {have}")
        return LinearSite(name, (int(view[0]), int(view[1])))
    if isinstance(layer, nn.Conv1d | nn.Conv2d):
        return _conv_site(name, layer, shape)
    raise InvalidInputError(f"layer '{name}' of the model is a {type(layer).__name__}; eigenmix composes nn.Linear and nn.Conv1d/2d layers")


def _conv_site(name: str, conv: nn.Conv1d | nn.Conv2d, shape: tuple[int, ...]) -> ConvSite:
    kind = type(conv).__name__
    if conv.groups != 1:
        raise InvalidInputError(
            f"layer '{name}' is a grouped {kind} (groups={conv.groups}): its update is one matrix per group, not a site eigenmix composes"
        )
    if conv.padding_mode != "zeros":
        raise InvalidInputError(f"layer '{name}': a {kind} with padding_mode '{conv.padding_mode}'; eigenmix composes zero-padded convs")
    view = matrix_view(tuple(conv.weight.shape))
    if matrix_view(tuple(shape)) != view:
        have = tuple(conv.weight.shape)
        raise InvalidInputError(f"layer '{name}': the module's update is {tuple(shape)}, the model's {kind} kernel is {have}")
    one_d = isinstance(conv, nn.Conv1d)

    def pair(v: tuple[int, ...], height: int = 1) -> tuple[int, int]:  # a Conv1d is a Conv2d of height 1
        return (height, int(v[0])) if one_d else (int(v[0]), int(v[1]))

    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * len(conv.kernel_size)
        elif all((d * (k - 1)) % 2 == 0 for d, k in zip(conv.dilation, conv.kernel_size, strict=True)):
            padding = tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
        else:
            raise InvalidInputError(f"layer '{name}': padding 'same' with an even kernel pads unevenly; give the padding in numbers")
    return ConvSite(name, view, pair(conv.kernel_size), pair(conv.stride), pair(padding, 0), pair(conv.dilation), one_d)
