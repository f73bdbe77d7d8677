"""``results.json``, ``results.md`` (best merge per column in bold) and ``results.png``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def _rows(results: dict) -> list[tuple[str, dict[str, float], float, float]]:
    """``(name, per-task accuracy, average, average normalized)`` for every line of the table."""
    tasks = results["tasks"]
    ind, floor = results["individual"], results["floor"]

    def avg(acc: dict[str, float]) -> float:
        return sum(acc[t] for t in tasks) / len(tasks)

    def norm(acc: dict[str, float]) -> float:
        return sum(acc[t] / ind[t] for t in tasks) / len(tasks)

    rows = [("individual", ind, avg(ind), 1.0), ("floor (linear probe)", floor, avg(floor), norm(floor))]
    ranked = sorted(results["methods"].items(), key=lambda kv: -kv[1]["avg_normalized_acc"])
    rows += [(name, r["per_task"], r["avg_acc"], r["avg_normalized_acc"]) for name, r in ranked]
    return rows


def table_rows(results: dict, bold: Callable[[str], str]) -> list[tuple[str, list[str], str]]:
    """``(name, cells, scale)`` per line: accuracy (%) per task, average, average normalized.
    The best merge method of each column goes through ``bold`` (the individual adapters
    are the reference, not a contender)."""
    tasks = results["tasks"]
    rows = _rows(results)

    def values(row: tuple) -> list[str]:
        return [f"{100 * v:.1f}" for v in [row[1][t] for t in tasks] + [row[2], row[3]]]

    best = [max((values(r)[i] for r in rows[2:]), key=float) for i in range(len(tasks) + 2)] if len(rows) > 2 else []
    out = []
    for number, row in enumerate(rows):
        cells = [bold(v) if number >= 2 and v == best[i] else v for i, v in enumerate(values(row))]
        scale = results["methods"].get(row[0], {}).get("chosen_params", {}).get("scale")
        out.append((row[0], cells, "" if scale is None else f"{scale:.3g}"))
    return out


def markdown_table(results: dict) -> str:
    """The table of :func:`table_rows` in Markdown, best merge per column in bold."""
    header = [*results["tasks"], "avg", "avg norm."]
    lines = ["| method | " + " | ".join(header) + " | scale |", "|---|" + "---:|" * (len(header) + 1)]
    for name, cells, scale in table_rows(results, lambda v: f"**{v}**"):
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {scale} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Two panels: average and average normalized accuracy per method (grouped bars, with the
    individual and floor levels), and normalized accuracy per task and method (heat map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    rows = _rows(results)
    merges = rows[2:]
    names = [r[0] for r in merges]
    fig, (ax, heat) = plt.subplots(2, 1, figsize=(max(9, 0.8 * len(names) + 3), 9), gridspec_kw={"height_ratios": [1, 1.1]})
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [100 * r[2] for r in merges], width=0.4, label="avg accuracy", color="#4477aa")
    ax.bar([i + 0.2 for i in x], [100 * r[3] for r in merges], width=0.4, label="avg normalized accuracy", color="#ee7733")
    ax.axhline(100 * rows[0][2], color="#228833", ls="--", lw=1, label=f"individual adapters ({100 * rows[0][2]:.1f})")
    ax.axhline(100 * rows[1][2], color="#888888", ls=":", lw=1, label=f"floor: linear probe ({100 * rows[1][2]:.1f})")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("%")
    low = min(100 * min(r[2] for r in rows), 100 * min(r[3] for r in merges))
    ax.set_ylim(max(0, low - 10), 102)
    ax.legend(loc="lower left", fontsize=8, ncol=2)
    ax.set_title(f"{len(tasks)}-task merge of LoRA adapters on all-MiniLM-L6-v2 (sorted by avg normalized accuracy)")
    grid = [[100 * r[1][t] / results["individual"][t] for t in tasks] for r in merges]
    image = heat.imshow(grid, cmap="RdYlGn", vmin=max(0, min(min(g) for g in grid)), vmax=100, aspect="auto")
    heat.set_xticks(range(len(tasks)), tasks)
    heat.set_yticks(range(len(names)), names)
    for i, g in enumerate(grid):
        for j, v in enumerate(g):
            heat.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7)
    heat.set_title("normalized accuracy per task (% of the individual adapter)")
    fig.colorbar(image, ax=heat, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(results: dict, folder: Path) -> None:
    """Write the three files into ``folder`` (the caller makes it atomic)."""
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / "results.md").write_text(markdown_table(results))
    plot(results, folder / "results.png")
