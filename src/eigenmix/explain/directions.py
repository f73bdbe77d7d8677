"""What an explanation attributes to: per layer, the rank-one directions of every module,
each with its coefficient, as one set of factors (pure functions).

A layer's update is ``ΔW = Σ_d w_d u_d v_dᵀ`` over directions ``d`` with unit ``u_d`` (m,)
and ``v_d`` (n,), where ``w_d = λ_d σ_d`` (design note 7). A direction belongs to one
*part*: a module, or the ``residual`` of a merge that is not a reweighting of the modules'
own directions (TIES, RegMean, TSV rotate or cut them). Three sources give these factors:

- a library (:func:`from_library`): every module's exact SVD, λ = 1 (a router may gate them);
- a merged or tuned adapter with the modules it came from (:func:`from_merge`): λ fitted by
  least squares on the modules' directions (exact when the merge is such a reweighting:
  task arithmetic, ``spectral``, a tune at level ``lambda``), and the rest as the
  ``residual`` part, so the directions still sum to the adapter's ``ΔW`` exactly;
- a live composition (:func:`from_composition`, :func:`from_factors`: ``left``, ``right``, σ, λ, owner).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from eigenmix.compose.composition import Composition
from eigenmix.compose.factors import LayerFactors
from eigenmix.compose.library import Library
from eigenmix.errors import InvalidInputError, ShapeMismatchError
from eigenmix.modules import AnyDelta
from eigenmix.spectral import SVD, default_rtol, factored_svd

RESIDUAL = "residual"


@dataclass(frozen=True)
class LayerDirections:
    """One layer's directions (D of them), in float64.

    Attributes:
        U: ``(m, D)`` unit output directions ``u_d``.
        V: ``(n, D)`` unit input directions ``v_d``.
        sigma: ``(D,)`` the singular value of each direction in its part.
        lam: ``(D,)`` its coefficient λ (the written ``ΔW`` uses ``λ_d σ_d``).
        owner: ``(D,)`` long, the part of each direction (an index into the target's parts).
        index: ``(D,)`` long, its rank within its part at this layer (0 = the strongest).
    """

    U: Tensor
    V: Tensor
    sigma: Tensor
    lam: Tensor
    owner: Tensor
    index: Tensor

    @property
    def weight(self) -> Tensor:
        """``(D,)`` ``λ_d σ_d``."""
        return self.lam * self.sigma

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.U.shape[0]), int(self.V.shape[0])

    def dense(self) -> Tensor:
        """``ΔW`` ``(m, n)`` (for tests and small layers)."""
        return (self.U * self.weight) @ self.V.T


def _join(forms: Sequence[tuple[int, SVD, Tensor]]) -> LayerDirections:
    """Directions from ``(part, SVD, λ)`` per part, side by side."""
    f64 = [(k, SVD(*(t.to(torch.float64) for t in f)), lam.to(torch.float64)) for k, f, lam in forms]
    return LayerDirections(
        torch.cat([f.U for _, f, _ in f64], 1),
        torch.cat([f.V for _, f, _ in f64], 1),
        torch.cat([f.S for _, f, _ in f64]),
        torch.cat([lam for _, _, lam in f64]),
        torch.cat([torch.full((f.S.shape[0],), k, dtype=torch.long) for k, f, _ in f64]),
        torch.cat([torch.arange(f.S.shape[0]) for _, f, _ in f64]),
    )


def from_library(library: Library) -> dict[str, LayerDirections]:
    """Per layer, every module's directions with λ = 1 (parts: the library's modules)."""
    out = {}
    for layer in library.layers:
        view = library.view(layer)
        out[layer] = _join([(k, SVD(u, s, v), torch.ones_like(s)) for k, u, s, v in zip(view.members, view.U, view.S, view.V, strict=True)])
    return out


def from_factors(factors: Mapping[str, LayerFactors], lam: Mapping[str, Tensor] | None = None) -> dict[str, LayerDirections]:
    """Per layer, a composition's directions (parts: its modules, in order) at its starting
    λ, or at ``lam`` (layer → ``(D,)``). ``left``/``right`` columns have unit norm already."""
    out = {}
    for layer, f in factors.items():
        if f.mu_left is not None:
            raise InvalidInputError("a composition at level 'lambda+mu' mixes directions; explain its exported adapter instead")
        owner = f.owner.to(torch.long)
        index = torch.zeros_like(owner)
        for k in owner.unique():
            index[owner == k] = torch.arange(int((owner == k).sum()))
        values = (lam or {}).get(layer, f.lam0)
        out[layer] = LayerDirections(f.left.double(), f.right.double(), f.sigma.double(), values.detach().double(), owner, index)
    return out


def from_composition(comp: Composition) -> dict[str, LayerDirections]:
    """Per layer, a live composition's directions at its current (learned) λ (parts: its
    modules, in ``comp.module_names`` order); record with ``apply=False``, its hooks add the update."""
    return from_factors(comp.factors, {layer: comp.lambdas(layer) for layer in comp.factors})


def fit_coefficients(f: SVD, parts: LayerDirections) -> Tensor:
    """The λ ``(D,)`` that make ``Σ_d λ_d σ_d u_d v_dᵀ`` closest to ``ΔW = U diag(S) Vᵀ``
    (``f``, float64) in Frobenius norm.

    The normal equations are D×D: ``H_de = σ_d σ_e (u_dᵀu_e)(v_dᵀv_e)`` and
    ``b_d = σ_d u_dᵀ ΔW v_d``, with ``u_dᵀ ΔW v_d`` from the factors (no m×n matrix).
    Least-norm where directions repeat (``lstsq``)."""
    G = (parts.U.T @ parts.U) * (parts.V.T @ parts.V)  # (D, D)
    H = parts.sigma[:, None] * G * parts.sigma[None, :]
    b = parts.sigma * (((parts.U.T @ f.U) * f.S) * (parts.V.T @ f.V)).sum(1)  # σ_d u_dᵀ U S Vᵀ v_d
    return torch.linalg.lstsq(H, b[:, None], driver="gelsd").solution[:, 0]


def residual_form(f: SVD, parts: LayerDirections) -> SVD:
    """The exact SVD of ``ΔW − Σ_d w_d u_d v_dᵀ`` (``ΔW = U diag(S) Vᵀ``: ``f``, float64),
    from stacked factors, cut where ``ΔW``'s float32 storage leaves only noise."""
    B = torch.cat([f.U * f.S, -parts.U * parts.weight], 1)  # (m, r + D)
    A = torch.cat([f.V, parts.V], 1).T  # (r + D, n)
    r = factored_svd(B, A, dtype=torch.float64)
    cut = float(f.S.max()) * default_rtol(torch.float32) if f.S.numel() else 0.0
    return r.truncate(int((r.S > cut).sum()))


def from_merge(merged: Mapping[str, AnyDelta], library: Library) -> dict[str, LayerDirections]:
    """Per layer of a merged (or tuned) adapter, the modules' directions at fitted λ plus
    the residual as one more part (index ``len(library)``; absent where it is zero)."""
    modules = from_library(library)
    out = {}
    for layer, delta in merged.items():
        if layer not in modules:
            raise InvalidInputError(f"the merged adapter has layer '{layer}', which none of its modules has")
        parts = modules[layer]
        if tuple(delta.shape) != parts.shape:
            raise ShapeMismatchError(f"layer '{layer}': the merged adapter is {tuple(delta.shape)}, its modules {parts.shape}")
        f = delta.svd64()
        fitted = replace(parts, lam=fit_coefficients(f, parts))
        rest = residual_form(f, fitted)
        if rest.S.numel() == 0:
            out[layer] = fitted
            continue
        extra = _join([(len(library), rest, torch.ones_like(rest.S))])
        # side by side: directions are the last dimension of every field
        out[layer] = LayerDirections(*(torch.cat([getattr(fitted, k.name), getattr(extra, k.name)], -1) for k in fields(LayerDirections)))
    return out
