"""An explanation: every layer's attribution over a probe set, aggregated the ways a reader
asks for it (per layer, per input, per token, per group of inputs, per direction), with
its JSON form and its notebook view (``_repr_html_``: the report's body)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from eigenmix.explain.attribution import SHARE_RULE, shares
from eigenmix.explain.directions import LayerDirections
from eigenmix.explain.live import LayerTally
from eigenmix.explain.view import Row


@dataclass(frozen=True)
class Explanation:
    """Attributions of one target over a probe set.

    Attributes:
        target: what was explained (a path or a name); ``kind``: library, merged, tuned or adapter.
        parts: the part names (modules, then ``residual`` where a merge has one).
        layers: the explained layers, in model order.
        directions: layer → its directions.
        tallies: layer → its summed attribution (:class:`~eigenmix.explain.live.LayerTally`).
        tokens: row → per-token part numerators ``(tokens, P)`` and ``‖y_t‖²`` summed over
            layers; empty where the layers see different tokens (images).
        rows: the probe rows.
        extra: anything else for ``explain.json`` (router, settings).
    """

    target: str
    kind: str
    parts: tuple[str, ...]
    layers: tuple[str, ...]
    directions: Mapping[str, LayerDirections]
    tallies: Mapping[str, LayerTally]
    tokens: Mapping[int, tuple[Tensor, Tensor]]
    rows: tuple[Row, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)

    # --- per layer ---------------------------------------------------------------------
    def layer_matrix(self) -> Tensor:
        """``(L, P, P)``: per layer ``Σ ⟨y_k, y_l⟩ / Σ ‖y‖²`` over every token of every row."""
        X = torch.stack([self.tallies[layer].parts.sum(0) for layer in self.layers])
        return shares(X, X.sum((1, 2))[:, None, None])

    def layer_shares(self) -> Tensor:
        """``(L, P)`` each part's share of each layer's update over the probe set (rows add to 1)."""
        return self.layer_matrix().sum(-1)

    def layer_energy(self) -> Tensor:
        """``(L,)`` mean ``‖ΔW x_t‖²`` per token (per row where rows have no tokens: images)."""
        count = sum(len(r.tokens) for r in self.rows) or len(self.rows)
        return torch.stack([self.tallies[layer].parts.sum((0, 1, 2)) for layer in self.layers]) / max(count, 1)

    # --- per row -----------------------------------------------------------------------
    def _row_layer_numerators(self) -> Tensor:
        """``(R, L, P)`` each part's share numerator per row and layer (``Σ_l ⟨y_k, y_l⟩``)."""
        return torch.stack([self.tallies[layer].parts.sum(-1) for layer in self.layers], 1)

    def row_layer_shares(self) -> Tensor:
        """``(R, L, P)`` each part's share of each layer's update on each row."""
        X = self._row_layer_numerators()
        return shares(X, X.sum(-1, keepdim=True))

    def row_shares(self) -> Tensor:
        """``(R, P)`` each part's share of the updates of every layer on each row."""
        X = self._row_layer_numerators().sum(1)  # (R, P)
        return shares(X, X.sum(-1, keepdim=True))

    def token_shares(self, row: int) -> Tensor:
        """``(tokens, P)`` each part's share of the updates of every layer at each token of ``row``."""
        num, energy = self.tokens[row]
        n = len(self.rows[row].tokens)
        return shares(num[:n], energy[:n, None])

    # --- per group -----------------------------------------------------------------------
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.group or "all" for r in self.rows))

    def group_shares(self) -> Tensor:
        """``(groups, P)``: each part's share of every layer's update over each group's rows."""
        X = self._row_layer_numerators().sum(1)  # (R, P)
        names = self.groups()
        index = torch.tensor([names.index(r.group or "all") for r in self.rows])
        G = X.new_zeros(len(names), X.shape[1]).index_add_(0, index, X)
        return shares(G, G.sum(-1, keepdim=True))

    # --- per direction -------------------------------------------------------------------
    def direction_shares(self, layer: str) -> Tensor:
        """``(D,)`` each direction's share of ``layer``'s update over the probe set."""
        t = self.tallies[layer]
        num = t.directions.sum(0)
        return shares(num, num.sum())

    def top_directions(self, part: int, n: int = 5, examples: int = 5) -> list[dict[str, Any]]:
        """Part ``part``'s ``n`` directions with the largest share of their layer's update, each
        with its σ, λ, share, response by group and the rows and tokens that excite it most."""
        found = []
        for layer in self.layers:
            d, s = self.directions[layer], self.direction_shares(layer)
            for j in (d.owner == part).nonzero().flatten().tolist():
                found.append((float(s[j]), layer, j))
        found.sort(key=lambda item: -item[0])
        return [self.direction_record(layer, j, examples) for _, layer, j in found[:n]]

    def direction_record(self, layer: str, j: int, examples: int = 5) -> dict[str, Any]:
        """What direction ``j`` of ``layer`` is and responds to (JSON-ready)."""
        d, t = self.directions[layer], self.tallies[layer]
        order = t.peak[:, j].argsort(descending=True)[:examples].tolist()
        names = self.groups()
        per_group = {g: 0.0 for g in names}
        for i, r in enumerate(self.rows):
            per_group[r.group or "all"] += float(t.peak[i, j])
        counts = {g: sum((r.group or "all") == g for r in self.rows) for g in names}
        top = []
        for i in order:
            row, at = self.rows[i], int(t.peak_token[i, j])
            token = row.tokens[at] if at < len(row.tokens) else "?"
            top.append({"line": row.line, "group": row.group, "token": token, "response": round(float(t.signed_peak[i, j]), 6),
                        "context": _context(row.tokens, at), "text": _text(row)})  # fmt: skip
        return {
            "layer": layer, "part": self.parts[int(d.owner[j])], "index": int(d.index[j]),
            "sigma": round(float(d.sigma[j]), 6), "lambda": round(float(d.lam[j]), 6),
            "share": round(float(self.direction_shares(layer)[j]), 6),
            "mean_peak_by_group": {g: round(per_group[g] / max(counts[g], 1), 6) for g in names},
            "top": top,
        }  # fmt: skip

    # --- forms -------------------------------------------------------------------------
    def to_json(self, top: int = 5, token_rows: int = 16) -> dict[str, Any]:
        """The content of ``explain.json``."""
        L, R = self.layer_matrix(), self.row_shares()
        rnd = lambda t: [[round(float(v), 6) for v in row] for row in t]  # noqa: E731
        return {
            "format": "eigenmix-explain", "version": 1, "target": self.target, "kind": self.kind,
            "parts": list(self.parts), "layers": list(self.layers), "rows": len(self.rows), "share_rule": SHARE_RULE,
            **dict(self.extra),
            "layer_shares": {layer: dict(zip(self.parts, [round(float(v), 6) for v in L[i].sum(-1)], strict=True))
                             for i, layer in enumerate(self.layers)},
            "layer_own": {layer: dict(zip(self.parts, [round(float(v), 6) for v in L[i].diagonal()], strict=True))
                          for i, layer in enumerate(self.layers)},
            "layer_cross": {layer: rnd(L[i]) for i, layer in enumerate(self.layers)},
            "layer_update_norm": {layer: round(float(e) ** 0.5, 6) for layer, e in zip(self.layers, self.layer_energy(), strict=True)},
            "group_shares": {g: dict(zip(self.parts, [round(float(v), 6) for v in row], strict=True))
                             for g, row in zip(self.groups(), self.group_shares(), strict=True)},
            "inputs": [{"line": r.line, "group": r.group or "all", "top_part": self.parts[int(R[i].argmax())],
                        "shares": dict(zip(self.parts, [round(float(v), 6) for v in R[i]], strict=True))}
                       for i, r in enumerate(self.rows)],
            "tokens": [{"line": self.rows[i].line, "tokens": list(self.rows[i].tokens), "shares": rnd(self.token_shares(i))}
                       for i in range(min(token_rows, len(self.rows))) if i in self.tokens],
            "top_directions": {self.parts[k]: self.top_directions(k, top) for k in range(len(self.parts))},
        }  # fmt: skip

    def _repr_html_(self) -> str:
        from eigenmix.explain.report import report_body

        return report_body(self)


def _text(row: Row, limit: int = 200) -> str:
    """The row's text (and its pair, after ``||``), cut at ``limit`` characters."""
    text = row.text if row.pair is None else f"{row.text} || {row.pair}"
    return text[:limit]


def _context(tokens: Sequence[str], at: int, width: int = 4) -> str:
    """The tokens around ``at``, the token itself in brackets."""
    left, right = tokens[max(at - width, 0) : at], tokens[at + 1 : at + 1 + width]
    return " ".join([*left, f"[{tokens[at]}]" if at < len(tokens) else "[?]", *right])
