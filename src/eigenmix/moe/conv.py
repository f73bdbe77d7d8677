"""``SpectralMoEConv2d``: the Spectral MoE layer as a drop-in ``nn.Conv2d`` (a spectral CNN
layer: its experts rescale the singular values of the kernel's matrix view).

A conv with kernel ``(m, c, kh, kw)`` (``groups = 1``) is the linear map ``W`` ``(m, n)``,
``n = c·kh·kw``, applied to every unfolded patch; the layer is
:class:`~eigenmix.moe.layer.SpectralMoELinear` on those rows, with the same parameters,
initialisation and specification (:mod:`eigenmix.moe.functional`), gated and routed per
output position. The fast path never unfolds: every product with an ``n``-sized side is a
conv with the layer's geometry (``y_lin``: the conv itself; ``x V``: ``k`` filters ``V``
reshaped to ``(k, c, kh, kw)``; the router: ``R`` reshaped likewise), and every product along
channels is a 1×1 conv, all in ``(N, C, H', W')`` layout:

    y_lin = conv(x, W) + b                      (N, m, H', W')
    z, r  = conv(x, [V diag(σ) | R])            (N, k + 1 | m, H', W'): one conv, split
    g     = sigmoid(Gᵀ y_lin + b_G)              (N, E, H', W')
    ρ     = sigmoid(r + b_R)
    out   = y_lin (1 + ρ (Σg − E)/E) + U (ρ z ⊙ (Sᵀ g − Σg) / E)

so the only work besides the conv is ``k(n + m)`` per position plus the ``mE`` gate — the
same collapse as the linear layer's. :meth:`SpectralMoEConv2d.naive` computes the
specification literally on the unfolded patches (the reference).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eigenmix.errors import InvalidInputError
from eigenmix.moe.functional import Mode, MoEOutput, MoEParams, collapse, gate_and_router, naive_forward
from eigenmix.moe.layer import SpectralMoELinear


class Geometry(NamedTuple):
    """A conv's shape and sliding: ``in_channels``, ``kernel_size``, ``stride``, ``padding``, ``dilation``."""

    in_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    def filters(self, columns: Tensor) -> Tensor:
        """``(n, j)`` columns of the matrix view → ``j`` conv filters ``(j, c, kh, kw)``."""
        return columns.T.reshape(columns.shape[1], self.in_channels, *self.kernel_size)

    def conv(self, x: Tensor, filters: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.conv2d(x, filters, bias, self.stride, self.padding, self.dilation)


def conv_fast_forward(x: Tensor, p: MoEParams, mode: Mode, geo: Geometry) -> MoEOutput:
    """The collapsed mixture on a conv, ``(N, c, H, W) → (N, m, H', W')``; gate ``(N, E, H', W')``,
    router ``(N, 1 | m, H', W')``.

    Two convs read ``x`` (in channels-last layout, so that their outputs are row views
    ``(N·H'·W', C)`` without a copy): the layer's own, and one whose filters are ``V diag(σ)``
    and the router's side by side. The rest is the linear layer's collapse on those rows
    (:func:`eigenmix.moe.functional.collapse`); the output is channels-last.
    """
    m, k = p.weight.shape[0], p.V.shape[1]
    xc = x.contiguous(memory_format=torch.channels_last)
    y = geo.conv(xc, p.weight.reshape(m, geo.in_channels, *geo.kernel_size), p.bias)  # (N, m, H', W')
    N, spatial = y.shape[0], y.shape[2:]

    def rows(t: Tensor) -> Tensor:  # (N, C, H', W') channels-last → (N·H'·W', C), a view
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])

    y_lin = rows(y)
    gated = p.gate is not None and p.router is not None
    columns = ([p.V * p.sigma] if mode == "spectral" else []) + ([p.router] if p.router is not None and gated else [])
    side = rows(geo.conv(xc, geo.filters(torch.cat(columns, 1)))) if columns else None  # (T, k + width)
    z = side[:, :k] if mode == "spectral" and side is not None else None
    if gated:
        assert side is not None and p.gate is not None and p.router is not None
        g = torch.sigmoid(torch.nn.functional.linear(y_lin, p.gate.T, p.gate_bias))  # (T, E)
        rho = torch.sigmoid(side[:, side.shape[1] - p.router.shape[1] :] + p.router_bias)  # type: ignore[operator]  # (T, 1 | m)
    else:
        g, rho = gate_and_router(y_lin, y_lin, p)  # g = 1, ρ = 1

    def rest() -> Tensor:
        assert p.residual is not None
        return rows(geo.conv(xc, p.residual.reshape(m, geo.in_channels, *geo.kernel_size), p.bias))

    out = collapse(y_lin, z, g, rho, p, mode, rest)  # (T, m)

    def maps(t: Tensor) -> Tensor:  # (T, C) → (N, C, H', W'), channels-last
        return t.reshape(N, *spatial, t.shape[1]).permute(0, 3, 1, 2)

    return MoEOutput(maps(out), maps(g), maps(rho))


class SpectralMoEConv2d(SpectralMoELinear):
    """A ``groups = 1`` conv ``(N, in_channels, H, W) → (N, out_channels, H', W')`` with a
    spectral mixture of experts on its kernel's matrix view ``(out, in·kh·kw)``.

    Args and defaults as :class:`SpectralMoELinear` (``rank`` ≤ ``min(out, in·kh·kw)``),
    plus the conv's ``kernel_size``, ``stride``, ``padding`` (numbers) and ``dilation``.
    Parameters are stored as the linear layer's: ``weight`` is the matrix view ``(m, n)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        n_experts: int,
        rank: int | None = None,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        **kwargs: object,
    ) -> None:
        pair = nn.modules.utils._pair
        kh, kw = pair(kernel_size)
        super().__init__(in_channels * kh * kw, out_channels, n_experts, rank, **kwargs)  # type: ignore[arg-type]
        self.geometry = Geometry(in_channels, (kh, kw), pair(stride), pair(padding), pair(dilation))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, n_experts: int, rank: int | None = None, **kwargs: object) -> SpectralMoEConv2d:
        """Wrap a pretrained ``conv`` (frozen copies of its kernel and bias; the top-``rank``
        SVD of its matrix view in float64)."""
        if not isinstance(conv, nn.Conv2d):
            raise InvalidInputError(f"from_conv needs an nn.Conv2d, not {type(conv).__name__}")
        if conv.groups != 1:
            raise InvalidInputError(f"a grouped Conv2d (groups={conv.groups}) has no single matrix view; the Spectral MoE takes groups=1")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise InvalidInputError("the Spectral MoE conv takes zero padding given in numbers (padding_mode 'zeros')")
        pair = nn.modules.utils._pair
        geometry = {"stride": pair(conv.stride), "padding": pair(conv.padding), "dilation": pair(conv.dilation)}
        layer = cls(
            conv.in_channels, conv.out_channels, pair(conv.kernel_size), n_experts, rank, **geometry,
            bias=conv.bias is not None, dtype=conv.weight.dtype, spectrum=False, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        layer.to(conv.weight.device)
        with torch.no_grad():
            layer.weight.copy_(conv.weight.flatten(1))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)  # type: ignore[union-attr]
        layer._set_spectrum(layer.weight.detach())
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W) → (N, out_channels, H', W')`` by the fast path."""
        result = conv_fast_forward(x, self.params(), self.mode, self.geometry)
        self.last_gate, self.last_router = result.gate.detach(), result.router.detach()
        return result.out

    def naive(self, x: Tensor) -> Tensor:
        """The specification on the unfolded patches, one full ``y_e`` per expert (the reference)."""
        geo = self.geometry
        patches = F.unfold(x, geo.kernel_size, dilation=geo.dilation, padding=geo.padding, stride=geo.stride)  # (N, n, L)
        out = naive_forward(patches.transpose(1, 2), self.params(), self.mode).out  # (N, L, m)
        height = (x.shape[2] + 2 * geo.padding[0] - geo.dilation[0] * (geo.kernel_size[0] - 1) - 1) // geo.stride[0] + 1
        return out.transpose(1, 2).reshape(x.shape[0], self.out_features, height, -1)

    def extra_repr(self) -> str:
        g = self.geometry
        conv = f"{g.in_channels}, {self.out_features}, kernel_size={g.kernel_size}, stride={g.stride}, padding={g.padding}"
        return f"{conv}, {super().extra_repr()}"
