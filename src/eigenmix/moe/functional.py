"""The Spectral MoE forward as pure functions: the fast path and the literal reference.

Notation (the specification of ``SpectralMoELinear``): ``x`` is ``(…, n)``; the frozen
layer is ``W`` ``(m, n)`` and ``b`` ``(m,)``; its top-k SVD ``W ≈ U_k diag(σ_k) V_kᵀ``
with ``U`` ``(m, k)``, ``σ`` ``(k,)``, ``V`` ``(n, k)``; the remainder
``W_res = W − U_k diag(σ_k) V_kᵀ`` is frozen. ``E`` experts hold scales ``S``: ``(E, k)``
in ``"spectral"`` mode, ``(E, m)`` in ``"output"`` mode. Gate ``G`` ``(m, E)`` (+ bias),
router ``R`` ``(n, 1)`` or ``(n, m)`` (+ bias).

    y_lin = x Wᵀ + b
    y_e   = x V diag(σ ⊙ s_e) Uᵀ + x W_resᵀ + b      (spectral)   |   y_lin ⊙ s_e   (output)
    g     = sigmoid(y_lin G + b_G)                     (…, E)
    ȳ     = (1/E) Σ_e g_e y_e
    ρ     = sigmoid(x R + b_R)                         (…, 1) or (…, m)
    out   = ρ ⊙ ȳ + (1 − ρ) ⊙ y_lin

**Why the fast path is exact.** In spectral mode ``Σ_e g_e y_e`` is linear in the experts:

    Σ_e g_e y_e = (x V ⊙ σ ⊙ (g S)) Uᵀ + (Σ_e g_e)(x W_resᵀ + b)

and ``x W_resᵀ + b = y_lin − (x V ⊙ σ) Uᵀ``, so

    ȳ = (1/E) [ (x V ⊙ σ ⊙ (g S − Σ_e g_e)) Uᵀ + (Σ_e g_e) y_lin ]

per token: one dense product for ``y_lin``, ``x V`` and ``(…) Uᵀ`` (``k(m + n)``), the
gate (``mE``) and ``g S`` (``Ek``): the only terms that grow with E are the tiny ones.
In output mode ``ȳ = (1/E) y_lin ⊙ (g S)`` (``mE``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Mode = Literal["spectral", "output"]


class MoEParams(NamedTuple):
    """The tensors of one layer (shapes in the module docstring)."""

    weight: Tensor  # (m, n) frozen W
    bias: Tensor | None  # (m,) frozen b
    U: Tensor  # (m, k)
    sigma: Tensor  # (k,)
    V: Tensor  # (n, k)
    scales: Tensor  # (E, k) spectral, (E, m) output
    gate: Tensor | None  # (m, E); None: no gate and no router (g = 1, ρ = 1)
    gate_bias: Tensor | None  # (E,)
    router: Tensor | None  # (n, 1) or (n, m)
    router_bias: Tensor | None  # (1,) or (m,)
    residual: Tensor | None = None  # (m, n) frozen W_res, when U and V train (else derived from W)


class MoEOutput(NamedTuple):
    out: Tensor  # (…, m)
    gate: Tensor  # (…, E)
    router: Tensor  # (…, 1) or (…, m)


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.nn.functional.linear(x, weight, bias)


def gate_and_router(x: Tensor, y_lin: Tensor, p: MoEParams) -> tuple[Tensor, Tensor]:
    """``g = sigmoid(y_lin G + b_G)`` ``(…, E)`` and ``ρ = sigmoid(x R + b_R)``; without a
    gate (``p.gate is None``) ``g = 1`` and ``ρ = 1``, so ``out = ȳ`` (SVF when E = 1)."""
    if p.gate is None or p.router is None:
        ones = y_lin.new_ones(())
        return ones.expand(*y_lin.shape[:-1], p.scales.shape[0]), ones.expand(*y_lin.shape[:-1], 1)
    g = torch.sigmoid(_linear(y_lin, p.gate.T, p.gate_bias))
    rho = torch.sigmoid(_linear(x, p.router.T, p.router_bias))
    return g, rho


def fast_forward(x: Tensor, p: MoEParams, mode: Mode) -> MoEOutput:
    """The collapsed mixture: cost independent of E except the ``mE`` and ``Ek`` terms.

    Written as ``out = y_lin + ρ ⊙ (ȳ − y_lin)`` so that, with the per-token router, the
    only full-size ``(…, m)`` work besides ``y_lin`` is one scaling and one fused
    ``addmm`` (``ρ`` folds into the small ``(…, k)`` factor).
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (T, n)
    y_lin = _linear(x2, p.weight, p.bias)  # (T, m)
    g, rho = gate_and_router(x2, y_lin, p)  # (T, E), (T, 1 | m)
    z = (x2 @ p.V) * p.sigma if mode == "spectral" else None  # (T, k): x V diag(σ)
    out = collapse(y_lin, z, g, rho, p, mode, lambda: _linear(x2, p.residual, p.bias))  # type: ignore[arg-type]
    return MoEOutput(out.reshape(*lead, -1), g.reshape(*lead, -1), rho.reshape(*lead, -1))


def collapse(y_lin: Tensor, z: Tensor | None, g: Tensor, rho: Tensor, p: MoEParams, mode: Mode, rest: Callable[[], Tensor]) -> Tensor:
    """``out = y_lin + ρ ⊙ (ȳ − y_lin)`` from the rows ``y_lin`` ``(T, m)``, ``z = x V diag(σ)``
    ``(T, k)`` (spectral mode), the gate ``(T, E)`` and router ``(T, 1 | m)``; ``rest()`` gives
    ``x W_resᵀ + b`` when ``U`` and ``V`` train. Without autograd ``y_lin`` is rescaled and
    accumulated in place (no ``(T, m)`` temporaries)."""
    n_experts = p.scales.shape[0]
    mix = g @ p.scales  # (T, k) spectral, (T, m) output: Σ_e g_e s_e
    inplace = not torch.is_grad_enabled()
    if mode == "output":  # ȳ − y_lin = y_lin ⊙ (mix / E − 1)
        factor = 1 + rho * (mix / n_experts - 1)
        return y_lin.mul_(factor) if inplace else y_lin * factor
    assert z is not None
    g_sum = g.sum(-1, keepdim=True)  # (T, 1)
    if p.residual is not None:  # U, V train: the frozen remainder is its own product
        y_bar = ((z * mix) @ p.U.T + g_sum * rest()) / n_experts
        return y_lin + rho * (y_bar - y_lin)
    # ȳ − y_lin = [(z ⊙ (mix − Σg)) Uᵀ + (Σg − E) y_lin] / E
    small, lin = z * (mix - g_sum) / n_experts, (g_sum - n_experts) / n_experts  # (T, k), (T, 1)
    if rho.shape[-1] == 1 and inplace:
        return y_lin.mul_(1 + rho * lin).addmm_(small * rho, p.U.T)
    if rho.shape[-1] == 1:
        return torch.addmm(y_lin * (1 + rho * lin), small * rho, p.U.T)
    return y_lin + rho * (small @ p.U.T + lin * y_lin)


def naive_forward(x: Tensor, p: MoEParams, mode: Mode) -> MoEOutput:
    """The specification computed literally, one full ``y_e`` per expert (reference; O(E·mn))."""
    y_lin = _linear(x, p.weight, p.bias)
    g, rho = gate_and_router(x, y_lin, p)
    residual = p.residual if p.residual is not None else p.weight - (p.U * p.sigma) @ p.V.T  # (m, n)
    total = torch.zeros_like(y_lin)
    for e in range(p.scales.shape[0]):
        spectral = mode == "spectral"
        y_e = ((x @ p.V) * (p.sigma * p.scales[e])) @ p.U.T + _linear(x, residual, p.bias) if spectral else y_lin * p.scales[e]
        total = total + g[..., e : e + 1] * y_e
    y_bar = total / p.scales.shape[0]
    return MoEOutput(rho * y_bar + (1 - rho) * y_lin, g, rho)
