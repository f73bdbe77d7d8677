"""A live routed composition: a frozen model whose target linears add the library's modules
with coefficients that depend on the input.

Per routed layer with input ``x`` (``(rows, tokens, n)``), a :class:`Router` gives
coefficients ``g`` (``(rows, tokens, K_l)`` per token, or ``(rows, 1, K_l)`` per sequence,
over the ``K_l`` library modules that have the layer) and the layer's output gains

    Σ_k g_k(x) · ΔW_k x = Σ_k g_k(x) · U_k diag(σ_k) (V_kᵀ x)

computed module by module from the library's spectral forms (``T·r_k·(m + n)`` multiply-adds
per module; no ``m × n`` matrix). A module whose coefficient is 0 for every row is skipped,
so adding a module that a row does not use leaves that row's output bit-identical. The
hooks are those of :mod:`eigenmix.compose.hooks` (the model itself is not modified).

Routers decide either in every layer (``scope = "layer"``: Arrow, the spectral router) or
once per forward pass, at the first routed layer, for all layers (``scope = "first"``: the
learned gate; uniform and given coefficients do not depend on the layer at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from eigenmix.compose.hooks import add_to_output
from eigenmix.compose.library import LayerView, Library
from eigenmix.errors import InvalidInputError

Scope = Literal["layer", "first"]


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


def routed_update(x: Tensor, view: LayerView, g: Tensor) -> Tensor:
    """``Σ_k g_k U_k diag(σ_k) V_kᵀ x`` for ``x`` ``(…, n)`` and ``g`` ``(…|1, K_l)`` → ``(…, m)``."""
    out = x.new_zeros(*x.shape[:-1], view.shape[0])
    for j, (U, S, V) in enumerate(zip(view.U, view.S, view.V, strict=True)):
        gj = g[..., j : j + 1]
        if not bool(gj.any()):
            continue  # a module nobody uses costs nothing and changes nothing
        out = out + gj.to(x.dtype) * (((x @ V.to(x.dtype)) * S.to(x.dtype)) @ U.T.to(x.dtype))
    return out


class RoutedModel(nn.Module):
    """A frozen ``model`` plus the ``library``'s modules, mixed per input by ``router``.

    Args:
        model: the base model (its parameters are frozen; it is not modified).
        library: the modules; every layer of theirs must be an ``nn.Linear`` of ``model``.
        router: a :class:`Router`.

    Call it like the model; ``attention_mask`` is passed on and tells routers which tokens
    are real; ``given`` (``(rows, K)``) sets the coefficients of each row (a mixed-adapter
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
        self._decision: Tensor | None = None  # scope "first": (rows, 1, K) of this forward pass
        self.last: dict[str, Tensor] = {}
        self._hooks = [add_to_output(self.model, layer, view.shape, self._update(layer)) for layer, view in self.views.items()]

    def _update(self, layer: str) -> Any:
        view = self.views[layer]

        def update(x: Tensor) -> Tensor:
            rows = x.reshape(x.shape[0], -1, x.shape[-1])  # (rows, tokens, n); 2-D inputs are one token
            g = self._coefficients(layer, rows, view)
            self.last[layer] = g.detach()
            return routed_update(rows, view, g).reshape(*x.shape[:-1], view.shape[0])

        return update

    def _coefficients(self, layer: str, x: Tensor, view: LayerView) -> Tensor:
        if self.router.scope == "layer":
            return self.router.coefficients(layer, x, view, self._batch)
        if self._decision is None:
            if len(view.members) != len(self.library):
                raise InvalidInputError(f"routing once per sequence needs every module at the first routed layer ('{layer}')")
            self._decision = self.router.coefficients(layer, x, view, self._batch)
        return self._decision[..., list(view.members)]

    def forward(self, *args: Any, given: Tensor | None = None, **kwargs: Any) -> Any:
        if given is not None and (given.ndim != 2 or given.shape[1] != len(self.library)):
            raise InvalidInputError(f"given coefficients must be (rows, {len(self.library)}); got {tuple(given.shape)}")
        self._batch, self._decision, self.last = Batch(kwargs.get("attention_mask"), given), None, {}
        try:
            return self.model(*args, **kwargs)
        finally:
            self._batch, self._decision = Batch(), None

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
