"""A live routed composition: a frozen model whose target linears add the library's modules
with coefficients that depend on the input.

Per routed layer with input ``x`` (``(rows, tokens, n)``), a :class:`Router` gives
coefficients ``g`` (``(rows, tokens, K_l)`` per token, or ``(rows, 1, K_l)`` per sequence,
over the ``K_l`` library modules that have the layer) and the layer's output gains

    Σ_k g_k(x) · ΔW_k x = Σ_k g_k(x) · U_k diag(σ_k) (V_kᵀ x)

computed from the library's spectral forms (``T·r_k·(m + n)`` multiply-adds per module used;
no ``m × n`` matrix, unless the modules' ranks make the matrices cheaper, as full-rank ones
do). A module whose coefficient is 0 for every row is skipped, so adding a module that a
row does not use leaves that row's output bit-identical. The hooks are those of
:mod:`eigenmix.compose.hooks` (the model itself is not modified); without autograd the update
is added in place into the linear's fresh output, with no extra pass.

Routers decide in every layer (``scope = "layer"``: Arrow, the spectral router), once per
forward pass from every layer's scores (``scope = "all"``: two passes, the first on the base
model to score, as MASS does), or once at the first routed layer (``scope = "first"``: the
learned gate; uniform and given coefficients do not depend on the layer at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from eigenmix.compose.hooks import first_routed_layer, on_output
from eigenmix.compose.library import LayerView, Library
from eigenmix.errors import InvalidInputError
from eigenmix.inputs import row_mask

Scope = Literal["layer", "first", "all"]


@dataclass(frozen=True)
class Batch:
    """What a router may know about the rows of one forward pass.

    Attributes:
        mask: ``(rows, tokens)`` attention mask (1 for real tokens), or None (all real).
        given: ``(rows, K)`` coefficients over the library's modules given by the caller
            (a mixed-adapter batch, the oracle), or None.
    """

    mask: Tensor | None = None
    given: Tensor | None = None


class Router(Protocol):
    """Coefficients for one routed layer (or, with ``scope = "first"``, for all layers)."""

    name: str
    scope: Scope

    def coefficients(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        """``(rows, tokens or 1, len(view.members))`` for the layer input ``x`` ``(rows, tokens, n)``."""
        ...


class ScoringRouter(Router, Protocol):
    """A router that can decide from every layer's scores (``scope = "all"``)."""

    def scores(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        """``(rows, tokens or 1, len(view.members))`` scores (before mixing)."""
        ...

    def decide(self, scores: dict[str, Tensor], views: dict[str, LayerView], k: int) -> Tensor:
        """Coefficients ``(rows, tokens or 1, k)`` from every layer's scores."""
        ...


def pooled(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x`` ``(rows, tokens, n)`` over the real tokens → ``(rows, 1, n)``."""
    if mask is None:
        return x.mean(1, keepdim=True)
    m = mask.to(x.dtype).unsqueeze(-1)  # (rows, tokens, 1)
    return (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)


def mix(scores: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
    """Coefficients from scores ``(…, K)``: a softmax at ``temperature`` over the ``top_k``
    highest scores (the others get 0), as Arrow and mixture-of-experts gates do."""
    if top_k is not None and top_k < scores.shape[-1]:
        kept, index = torch.topk(scores, top_k, dim=-1)
        scores = torch.full_like(scores, float("-inf")).scatter(-1, index, kept)
    return torch.softmax(scores / temperature, dim=-1)


def layer_average(scores: dict[str, Tensor], views: dict[str, LayerView], k: int) -> Tensor:
    """Each module's score averaged over the layers it is in: ``(rows, tokens or 1, k)``."""
    total: Tensor | None = None
    count = torch.zeros(k)
    for layer, s in scores.items():
        members = list(views[layer].members)
        if total is None:
            total = s.new_zeros(*s.shape[:-1], k)
        total[..., members] += s
        count[members] += 1
    if total is None:
        raise InvalidInputError("no routed layer ran")
    return total / count.clamp(min=1).to(total.dtype)


def routed_update(x: Tensor, view: LayerView, g: Tensor, out: Tensor | None = None) -> Tensor:
    """``Σ_k g_k U_k diag(σ_k) V_kᵀ x`` for ``x`` ``(rows, tokens, n)`` and ``g``
    ``(rows, tokens|1, K_l)`` → ``(rows, tokens, m)``, added in place into ``out`` when it
    is given (the linear's own output: no extra pass over an ``m``-sized tensor).

    Only the modules some row uses are computed (a module with coefficient 0 everywhere
    costs nothing and changes nothing). With coefficients per sequence, modules of high rank
    (full-rank ones such as ``svf``'s), whose factors cost more than the rows' own ``m × n``
    matrices, run as matrices (:func:`_dense_update`). When most rows use most of them (soft
    mixing), their factors are stacked and the update is two products, ``((x V) ⊙ g σ) Uᵀ``;
    when each row uses one (top-1, mixed batches) and the ranks agree, two batched products
    with each row's own module; otherwise each module runs on its own rows only."""
    if out is None:
        out = x.new_zeros(*x.shape[:-1], view.shape[0])
    used = g.reshape(g.shape[0], -1, g.shape[-1]).ne(0).any(1)  # (rows, K_l)
    modules = [j for j in range(used.shape[1]) if bool(used[:, j].any())]
    g = g.to(x.dtype)
    (m, n), tokens = view.shape, x.shape[1]
    factored = tokens * sum(int(view.S[j].shape[0]) for j in modules) * (m + n)  # multiply-adds per row
    if modules and g.shape[1] == 1 and (len(modules) + tokens) * m * n < factored:  # per sequence: each row's matrix
        return _dense_update(x, view, g, modules, out)
    if modules and int(used[:, modules].sum()) * 2 > used.shape[0] * len(modules):  # dense: stacked factors
        U, S, V, ranks = view.stacked
        if len(modules) < len(ranks):  # only the used modules' columns
            starts = [sum(ranks[:j]) for j in range(len(ranks))]
            cols = torch.cat([torch.arange(starts[j], starts[j] + ranks[j]) for j in modules])
            U, S, V, ranks = U[:, cols], S[cols], V[:, cols], tuple(ranks[j] for j in modules)
        gs = torch.repeat_interleave(g[..., modules], torch.tensor(ranks), dim=-1) * S.to(x.dtype)  # (rows, tokens|1, Σr)
        z = ((x @ V.to(x.dtype)) * gs).reshape(-1, V.shape[1])
        out.reshape(-1, out.shape[-1]).addmm_(z, U.T.to(x.dtype))
        return out
    if view.batched is not None and g.shape[1] == 1 and bool((used.sum(1) <= 1).all()):  # one module per row: batched
        U, S, V = view.batched
        idx = used.to(torch.int64).argmax(1)  # (rows,): each row's module (any, with weight 0, for rows with none)
        w = g[torch.arange(g.shape[0]), 0, idx] * used.any(1).to(x.dtype)  # (rows,)
        z = torch.bmm(x, V[idx].to(x.dtype)) * (S[idx].to(x.dtype) * w[:, None]).unsqueeze(1)  # (rows, tokens, r)
        out.baddbmm_(z, U[idx].to(x.dtype).transpose(1, 2))
        return out
    for j in modules:
        U, S, V = (t.to(x.dtype) for t in (view.U[j], view.S[j], view.V[j]))
        rows = used[:, j].nonzero().squeeze(1)
        out.index_add_(0, rows, g[rows, :, j : j + 1] * (((x[rows] @ V) * S) @ U.T))
    return out


def _dense_update(x: Tensor, view: LayerView, g: Tensor, modules: list[int], out: Tensor) -> Tensor:
    """:func:`routed_update` for coefficients per sequence (``g`` ``(rows, 1, K_l)``) with the
    used modules' matrices ``ΔW_k`` (``view.dense``): each row's own ``Σ_k g_k ΔW_k``, then
    one batched product. (Per token, the factored form is as fast: the products are as many.)"""
    D = view.dense[modules].to(x.dtype)  # (K, m, n)
    W = torch.einsum("rk,kmn->rmn", g[:, 0, modules], D)  # (rows, m, n)
    return out.baddbmm_(x, W.transpose(1, 2))


class RoutedModel(nn.Module):
    """A frozen ``model`` plus the ``library``'s modules, mixed per input by ``router``.

    Args:
        model: the base model (its parameters are frozen; it is not modified).
        library: the modules; every layer of theirs must be an ``nn.Linear`` of ``model``.
        router: a :class:`Router`.

    Call it like the model; the batch's mask (:func:`eigenmix.inputs.row_mask`) tells routers
    which tokens are real; ``given`` (``(rows, K)``) sets the coefficients of each row (a mixed-adapter
    batch) for routers that read them. :meth:`detach_hooks` gives the model back.
    """

    def __init__(self, model: nn.Module, library: Library, router: Router) -> None:
        super().__init__()
        if len(library) == 0:
            raise InvalidInputError("the library is empty")
        self.model = model.requires_grad_(False)
        self.library, self.router = library, router
        self.views = {layer: library.view(layer) for layer in library.layers}
        self._batch = Batch()
        self._decision: Tensor | None = None  # scope "first"/"all": (rows, 1, K) of this forward pass
        self._scores: dict[str, Tensor] | None = None  # scope "all": the first pass's scores per layer
        if router.scope == "all" and not (hasattr(router, "scores") and hasattr(router, "decide")):
            raise InvalidInputError(f"router '{router.name}' cannot decide from every layer's scores (scope 'all')")
        self.last: dict[str, Tensor] = {}
        self.decision_layer = first_routed_layer(self.model, self.views) if router.scope == "first" else None
        self._hooks = [on_output(self.model, layer, view.shape, self._update(layer)) for layer, view in self.views.items()]

    def _update(self, layer: str) -> Any:
        view = self.views[layer]

        def change(x: Tensor, output: Tensor) -> Tensor:
            rows = x.reshape(x.shape[0], -1, x.shape[-1])  # (rows, tokens, n); 2-D inputs are one token
            if self._scores is not None:  # scope "all", first pass: score only, change nothing
                self._scores[layer] = self.router.scores(layer, rows, view, self._batch)  # type: ignore[attr-defined]
                return output
            g = self._coefficients(layer, rows, view)
            self.last[layer] = g.detach()
            if torch.is_grad_enabled() or not output.is_contiguous():
                return output + routed_update(rows, view, g).reshape(output.shape)
            routed_update(rows, view, g, out=output.view(rows.shape[0], rows.shape[1], -1))  # in place: no copy
            return output

        return change

    def _coefficients(self, layer: str, x: Tensor, view: LayerView) -> Tensor:
        if self.router.scope == "layer":
            return self.router.coefficients(layer, x, view, self._batch)
        if layer == self.decision_layer:
            if len(view.members) != len(self.library):
                raise InvalidInputError(f"routing once per sequence needs every module at the first routed layer ('{layer}')")
            self._decision = self.router.coefficients(layer, x, view, self._batch)
        if self._decision is None:
            raise InvalidInputError(f"layer '{layer}' ran before '{self.decision_layer}', where the router decides")
        return self._decision[..., list(view.members)]

    def forward(self, *args: Any, given: Tensor | None = None, **kwargs: Any) -> Any:
        if given is not None and (given.ndim != 2 or given.shape[1] != len(self.library)):
            raise InvalidInputError(f"given coefficients must be (rows, {len(self.library)}); got {tuple(given.shape)}")
        self._batch, self._decision, self.last = Batch(row_mask(kwargs), given), None, {}
        try:
            if self.router.scope == "all":
                self._scores = {}
                self.model(*args, **kwargs)
                scores, self._scores = self._scores, None
                self._decision = self.router.decide(scores, self.views, len(self.library))  # type: ignore[attr-defined]
            return self.model(*args, **kwargs)
        finally:
            self._batch, self._decision, self._scores = Batch(), None, None

    def routing(self) -> Tensor:
        """The last forward pass's coefficients over the library, per row ``(rows, K)``:
        each module's coefficient averaged over tokens and over the layers it is in."""
        K = len(self.library)
        total, count = None, torch.zeros(K)
        for layer, g in self.last.items():
            members = list(self.views[layer].members)
            per_row = g.mean(1)  # (rows, K_l)
            if total is None:
                total = torch.zeros(per_row.shape[0], K, dtype=per_row.dtype)
            total[:, members] += per_row
            count[members] += 1
        if total is None:
            raise InvalidInputError("no forward pass has run yet")
        return total / count.clamp(min=1)

    def detach_hooks(self) -> None:
        """Give the base model back unchanged (the hooks removed)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
