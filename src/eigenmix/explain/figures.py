"""The report's figures (matplotlib, the plotting library the benchmarks already use; the
Agg backend, so no display is needed). Each function returns one figure as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
import torch
from matplotlib.figure import Figure
from torch import Tensor

from eigenmix.explain.view import ExplanationView

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen

DPI = 110


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def short(layer: str) -> str:
    """``encoder.layer.3.attention.self.query`` → ``3.attention.self.query``."""
    parts = layer.split(".")
    digits = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[digits[0] :]) if digits else layer


def heatmap(values: Tensor, rows: Sequence[str], cols: Sequence[str], title: str, xlabel: str, ylabel: str, unit: str,
            annotate: bool = True, diverging: bool = True) -> bytes:  # fmt: skip
    """One annotated heatmap (a diverging scale centred on 0 where values can be negative)."""
    v = values.double()
    h = max(2.2, 0.28 * len(rows) + 1.4)
    w = max(4.5, 0.75 * len(cols) + 3.2)
    fig, ax = plt.subplots(figsize=(w, h))
    lim = max(float(v.abs().max()), 1e-12)
    im = ax.imshow(v.numpy(), cmap="RdBu_r" if diverging else "viridis", vmin=-lim if diverging else 0, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if annotate and len(rows) * len(cols) <= 400:
        for i in range(len(rows)):
            for j in range(len(cols)):
                ax.text(j, i, f"{float(v[i, j]):.2f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(float(v[i, j])) > 0.6 * lim else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, label=unit, shrink=0.8)
    return png(fig)


def layer_part(ex: ExplanationView) -> bytes:
    return heatmap(ex.layer_shares(), [short(x) for x in ex.layers], ex.parts, f"Share of each layer's update, {len(ex.rows)} rows",
                   "part (module)", "layer", "share of ‖ΔW x‖² (rows add to 1)")  # fmt: skip


def input_part(ex: ExplanationView, limit: int = 40) -> bytes:
    n = min(limit, len(ex.rows))
    labels = [f"{r.line}: {r.group or ''} {r.text[:28]}" for r in ex.rows[:n]]
    return heatmap(ex.row_shares()[:n], labels, ex.parts, f"Share of every layer's update, per input (first {n})",
                   "part (module)", "input (line: group text)", "share (rows add to 1)")  # fmt: skip


def group_part(ex: ExplanationView) -> bytes:
    return heatmap(ex.group_shares(), ex.groups(), ex.parts, "Response by group of inputs (task × module)",
                   "part (module)", "group of inputs", "share of every layer's update")  # fmt: skip


def token_parts(ex: ExplanationView, row: int) -> bytes:
    r = ex.rows[row]
    return heatmap(ex.token_shares(row).T, ex.parts, r.tokens, f"Line {r.line}: share of every layer's update, per token",
                   "token", "part (module)", "share at the token", annotate=False)  # fmt: skip


def top_directions(ex: ExplanationView, n: int = 5) -> bytes:
    P = len(ex.parts)
    cols = min(P, 4)
    fig, axes = plt.subplots((P + cols - 1) // cols, cols, figsize=(3.6 * cols, 2.3 * ((P + cols - 1) // cols)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= P:
            ax.axis("off")
            continue
        recs = ex.top_directions(k, n, examples=1)
        labels = [f"{short(r['layer'])} #{r['index']}" for r in recs]
        ax.barh(range(len(recs)), [r["share"] for r in recs], color="tab:blue")
        ax.set_yticks(range(len(recs)), labels=labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_title(ex.parts[k], fontsize=9)
        ax.set_xlabel("share of its layer's update", fontsize=7)
    fig.suptitle("Strongest directions per part", fontsize=10)
    fig.tight_layout()
    return png(fig)


def overlaps(ex: ExplanationView, limit: int = 36) -> bytes:
    """Per layer, the overlap of the parts' output subspaces: ``‖U_kᵀU_l‖²_F / min(r_k, r_l)``
    (1: one contains the other; 0: orthogonal)."""
    layers = ex.layers[:limit]
    cols = min(6, len(layers))
    rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows + 0.6), squeeze=False)
    im = None
    for ax, layer in zip(axes.flat, layers, strict=False):
        d = ex.directions[layer]
        O = part_overlap(d.U, d.owner, len(ex.parts))
        im = ax.imshow(O.numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(short(layer), fontsize=6)
        ax.set_xticks(range(len(ex.parts)), labels=list(ex.parts), rotation=90, fontsize=4)
        ax.set_yticks(range(len(ex.parts)), labels=list(ex.parts), fontsize=4)
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    fig.suptitle("Output-subspace overlap per layer (part × part)", fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes, label="overlap ‖U_kᵀU_l‖²/min(r_k, r_l)", shrink=0.6)
    return png(fig)


def part_overlap(U: Tensor, owner: Tensor, parts: int) -> Tensor:
    """``(P, P)`` overlap of the parts' column spaces (each part's ``u`` are orthonormal)."""
    out = torch.zeros(parts, parts, dtype=torch.float64)
    for k in range(parts):
        for j in range(parts):
            a, b = U[:, owner == k], U[:, owner == j]
            if a.shape[1] and b.shape[1]:
                out[k, j] = float((a.T @ b).square().sum()) / min(a.shape[1], b.shape[1])
    return out


def spectra(ex: ExplanationView) -> bytes:
    P = len(ex.parts)
    cols = min(P, 4)
    rows = (P + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.4 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= P:
            ax.axis("off")
            continue
        for layer in ex.layers:
            d = ex.directions[layer]
            w = (d.sigma * d.lam.abs())[d.owner == k]
            if w.numel():
                ax.plot(range(1, w.numel() + 1), w.numpy(), lw=0.7, alpha=0.6)
        ax.set_yscale("log")
        ax.set_title(ex.parts[k], fontsize=9)
        ax.set_xlabel("direction (by σ)", fontsize=7)
        ax.set_ylabel("|λ σ|", fontsize=7)
    fig.suptitle("Spectra: |λ σ| of each part's directions, one line per layer", fontsize=10)
    fig.tight_layout()
    return png(fig)
