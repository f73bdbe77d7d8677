"""Draws docs/assets/overview.svg, the picture at the top of the README and the site's home page.

    .venv/bin/python docs/assets/overview.py

Modules (LoRA adapters, fine-tunes) → their singular directions, placed in one joint basis →
coefficients set by a rule, learned from a few rows, or chosen per input → merged or live
models, whose every coefficient can be read back.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).with_suffix(".svg")
COLORS = ["#3b6fb6", "#e07b39", "#4a9a5b"]


def box(ax, x, y, w, h, title, lines, color="#f4f6fa"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#8a94a6", lw=1))
    ax.text(x + w / 2, y + h - 0.22, title, ha="center", va="top", fontsize=11, weight="bold", color="#1f2937")
    for i, line in enumerate(lines):
        ax.text(x + w / 2, y + h - 0.62 - 0.34 * i, line, ha="center", va="top", fontsize=9, color="#374151")


def arrow(ax, x0, x1, y):
    ax.add_patch(FancyArrowPatch((x0, y), (x1, y), arrowstyle="-|>", mutation_scale=14, lw=1.4, color="#6b7280"))


def directions(ax, x, y):
    """Three modules' directions as bars of their singular values σ, in one joint basis."""
    sigma = [[1.0, 0.62, 0.35, 0.2], [0.9, 0.5, 0.3], [0.8, 0.55, 0.4, 0.25, 0.12]]
    i = 0
    for k, s in enumerate(sigma):
        for v in s:
            ax.add_patch(FancyBboxPatch((x + 0.13 * i, y), 0.09, 0.9 * v, boxstyle="square,pad=0", fc=COLORS[k], ec="none"))
            i += 1
        i += 1
    ax.text(x + 0.13 * (i - 1) / 2, y - 0.12, "σ of each direction, per module", ha="center", va="top", fontsize=8, color="#4b5563")


def main() -> None:
    fig, ax = plt.subplots(figsize=(10, 3.3))
    ax.set_xlim(0, 10.6)
    ax.set_ylim(0, 3.4)
    ax.axis("off")
    modules = ["LoRA adapters  $B_k A_k$", "or fine-tunes  $W_{ft} - W_0$", "of one base model:", "text or vision"]
    box(ax, 0.1, 0.55, 2.3, 2.6, "modules", modules)
    arrow(ax, 2.5, 3.0, 1.85)
    basis = [r"$\Delta W_k = \sum_i \sigma_{ki}\, u_{ki} v_{ki}^\top$", "factored SVDs: no m × n matrix"]
    box(ax, 3.1, 0.55, 3.1, 2.6, "one joint spectral basis", basis)
    directions(ax, 3.45, 0.95)
    arrow(ax, 6.3, 6.8, 1.85)
    box(
        ax,
        6.9,
        0.55,
        3.6,
        2.6,
        r"coefficients $\lambda_{ki}$",
        ["set by a rule → merge", "fit to a few rows → calibrated", "merge, tune", "chosen per input → route", "read back → explain"],
    )
    ax.text(5.3, 0.18, r"$\Delta W(\lambda) = \sum_k \sum_i \lambda_{ki}\, \sigma_{ki}\, u_{ki} v_{ki}^\top$", ha="center", fontsize=12)
    fig.savefig(OUT, format="svg", bbox_inches="tight", metadata={"Date": None})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
