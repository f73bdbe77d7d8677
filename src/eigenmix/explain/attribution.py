"""Attribution of a layer's update to directions and parts (pure functions; design note 7).

For a token ``x`` the update is ``y = ΔW x = Σ_d c_d`` with ``c_d = a_d u_d`` and the
*response* ``a_d = g_d λ_d σ_d (v_dᵀ x)`` (``g_d``: a router's coefficient of the
direction's module, 1 without one). The share of direction ``d`` is its contribution's
projection on the whole update,

    share_d = ⟨c_d, y⟩ / ‖y‖² = (a_d² + Σ_{e≠d} a_d a_e u_dᵀu_e) / ‖y‖²,

so the shares add up to exactly 1. The first term is the direction's *own* energy; the rest
is its half of every *cross* term ``2 a_d a_e u_dᵀu_e`` (interference: within one module the
``u`` are orthonormal and it is 0; across modules it is what the modules' overlap does to
this input). A share is negative when a direction cancels the others. For a part (a module,
or a merge's residual) the same holds with ``y_k = Σ_{d∈k} c_d``:
``share_k = ⟨y_k, y⟩/‖y‖² = ‖y_k‖²/‖y‖² + Σ_{l≠k} ⟨y_k, y_l⟩/‖y‖²``.

Over many tokens (a sequence, a probe set, several layers), numerators and ``‖y‖²`` are
summed before dividing: an energy-weighted mean, which still adds up to 1. Everything
follows from the responses' second moment ``S = Σ_t a_t a_tᵀ`` (D×D) and the Gram
``G = UᵀU`` (D×D) of the layer's output directions — no m-sized tensor is kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eigenmix.explain.directions import LayerDirections

SHARE_RULE = (
    "share_k = <y_k, y> / |y|^2 for the layer's update y = dW x and the part's update y_k: "
    "its own energy |y_k|^2/|y|^2 plus half of each cross term 2<y_k, y_l>/|y|^2; shares add up to 1 "
    "(negative: the part cancels others). Over tokens, rows and layers, numerators and |y|^2 are summed first."
)


def responses(x: Tensor, parts: LayerDirections, gate: Tensor | None = None) -> Tensor:
    """``a`` ``(rows, tokens, D)`` (float64) for inputs ``x`` ``(rows, tokens, n)``;
    ``gate`` ``(rows, tokens or 1, D)`` multiplies each direction (a router's coefficients)."""
    a = (x.to(torch.float64) @ parts.V) * parts.weight
    return a if gate is None else a * gate.to(torch.float64)


def moments(a: Tensor) -> Tensor:
    """``S`` ``(rows, D, D)``: ``Σ_t a_t a_tᵀ`` over each row's tokens (padding masked to 0 by the caller)."""
    return torch.einsum("rtd,rte->rde", a, a)


def numerators(S: Tensor, G: Tensor) -> Tensor:
    """Per direction ``Σ_t ⟨c_d, y⟩`` ``(…, D)`` from ``S`` ``(…, D, D)`` and ``G`` ``(D, D)``;
    their sum over ``d`` is ``Σ_t ‖y_t‖²``."""
    return (S * G).sum(-1)


def part_matrix(S: Tensor, G: Tensor, owner: Tensor, parts: int) -> Tensor:
    """``X`` ``(…, P, P)`` with ``X_kl = Σ_t ⟨y_k, y_l⟩``: its diagonal is each part's own
    energy, its row sums each part's share numerator, its total ``Σ_t ‖y_t‖²``."""
    O = torch.nn.functional.one_hot(owner, parts).to(S.dtype)  # (D, P)
    return O.T @ (S * G) @ O


def token_numerators(a: Tensor, G: Tensor, owner: Tensor, parts: int) -> tuple[Tensor, Tensor]:
    """Per token: each part's share numerator ``(rows, tokens, P)`` and ``‖y_t‖²``
    ``(rows, tokens)``."""
    num = a * (a @ G)  # (rows, tokens, D): a_d (G a)_d
    out = num.new_zeros(*num.shape[:-1], parts).index_add_(-1, owner, num)
    return out, num.sum(-1)


def shares(numerator: Tensor, energy: Tensor | float) -> Tensor:
    """``numerator / energy``, 0 where there is no update."""
    energy = torch.as_tensor(energy, dtype=numerator.dtype)
    return torch.where(energy > 0, numerator / energy.clamp(min=torch.finfo(numerator.dtype).tiny), torch.zeros_like(numerator))
