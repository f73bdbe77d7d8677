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
    z     = conv(x, V) ⊙ σ                      (N, k, H', W')
    g     = sigmoid(Gᵀ y_lin + b_G)              (N, E, H', W')
    ρ     = sigmoid(conv(x, R) + b_R)            (N, 1 | m, H', W')
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
from eigenmix.moe.functional import Mode, MoEOutput, MoEParams, naive_forward
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


def _channels(t: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``weight`` ``(out, in)`` applied along the channels of ``t`` ``(N, in, H, W)`` (a 1×1 conv)."""
    return F.conv2d(t, weight[:, :, None, None], bias)


def conv_fast_forward(x: Tensor, p: MoEParams, mode: Mode, geo: Geometry) -> MoEOutput:
    """The collapsed mixture on a conv, ``(N, c, H, W) → (N, m, H', W')``; gate ``(N, E, H', W')``,
    router ``(N, 1 | m, H', W')``."""
    m, E = p.weight.shape[0], p.scales.shape[0]
    y = geo.conv(x, p.weight.reshape(m, geo.in_channels, *geo.kernel_size), p.bias)  # (N, m, H', W')
    if p.gate is None or p.router is None:  # g = 1, ρ = 1
        g = y.new_ones(y.shape[0], E, *y.shape[2:])
        rho = y.new_ones(y.shape[0], 1, *y.shape[2:])
    else:
        g = _channels(y, p.gate.T, p.gate_bias).sigmoid()  # (N, E, H', W')
        rho = geo.conv(x, geo.filters(p.router), p.router_bias).sigmoid()  # (N, 1 | m, H', W')
    mix = _channels(g, p.scales.T)  # (N, k | m, H', W'): Σ_e g_e s_e
    if mode == "output":
        return MoEOutput(y * (1 + rho * (mix / E - 1)), g, rho)
    z = geo.conv(x, geo.filters(p.V)) * p.sigma[:, None, None]  # (N, k, H', W')
    g_sum = g.sum(1, keepdim=True)  # (N, 1, H', W')
    if p.residual is not None:  # U, V train: the frozen remainder is its own conv
        rest = geo.conv(x, p.residual.reshape(m, geo.in_channels, *geo.kernel_size), p.bias)
        y_bar = (_channels(z * mix, p.U) + g_sum * rest) / E
        return MoEOutput(y + rho * (y_bar - y), g, rho)
    small, lin = z * (mix - g_sum) / E, (g_sum - E) / E
    if rho.shape[1] == 1:
        return MoEOutput(y * (1 + rho * lin) + _channels(small * rho, p.U), g, rho)
    return MoEOutput(y + rho * (_channels(small, p.U) + lin * y), g, rho)


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
