"""``results.png`` of ``eigenmix bench bridge``: the cat and dog concept subspaces.

A pure function of the numbers ``results.json`` holds (``cats_and_dogs`` and
``feature_picking``), so the figure can be redrawn from the JSON alone::

    results = json.loads(Path("results.json").read_text())
    Path("results.png").write_bytes(cats_and_dogs_png(results["cats_and_dogs"], results["feature_picking"]))
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CAT, DOG, PHOTO = "#ee7733", "#4477aa", "#cc3311"
BOX = {"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8}


def cats_and_dogs_png(cats_and_dogs: dict, feature_picking: dict | None = None) -> bytes:
    """The figure as PNG bytes: the cat and dog classes on the plane of ``cats_and_dogs["plane"]``
    (with the ``chelsea`` photo and the words "cat" and "dog" where present), the principal
    angles between the two subspaces, and, given ``feature_picking`` (``{d: {"top1": …}}``),
    unseen-class top-1 against the number of directions kept."""
    import matplotlib

    matplotlib.use("Agg")  # no display: written to bytes
    import matplotlib.pyplot as plt

    panels = 3 if feature_picking else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels + 2, 5.6), gridspec_kw={"width_ratios": [1.5] + [1] * (panels - 1)})
    _plane(axes[0], cats_and_dogs)
    _angles(axes[1], cats_and_dogs["principal_angles_deg"])
    if feature_picking:
        _picking(axes[2], feature_picking)
    fig.suptitle("Cats and dogs in the bridge's joint space (EfficientNet-Lite0 classes and all-MiniLM-L6-v2 names)")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def _plane(ax: Axes, cd: dict) -> None:
    plane = cd["plane"]
    dogs, cats = plane["dogs"], plane["cats"]
    ax.scatter([x for x, _ in dogs], [y for _, y in dogs], s=18, color=DOG, alpha=0.7, label=f"dog classes ({len(dogs)})")
    ax.scatter([x for x, _ in cats], [y for _, y in cats], s=40, color=CAT, edgecolor="black", lw=0.5, label=f"cat classes ({len(cats)})")
    _cat_names(ax, cats, plane.get("cat_names", []))
    for word, (x, y) in plane.get("words", {}).items():
        color = CAT if word == "cat" else DOG
        ax.scatter([x], [y], marker="X", s=110, color=color, edgecolor="black", lw=0.8, zorder=3)
        left = word == "cat"  # the cats' names take the right
        ax.annotate(f'the word "{word}"', (x, y), xytext=(-8 if left else 8, -14), textcoords="offset points", fontsize=8, bbox=BOX,
                    ha="right" if left else "left")  # fmt: skip
    if "chelsea" in plane:
        c = cd.get("chelsea")
        energy = f" (energy {c['energy_in_cats']:.2f} cats, {c['energy_in_dogs']:.2f} dogs)" if isinstance(c, dict) else ""
        x, y = plane["chelsea"]
        ax.scatter([x], [y], marker="*", s=260, color=PHOTO, edgecolor="black", lw=0.6, label=f"chelsea, a cat photo{energy}")
    ax.scatter([], [], marker="X", s=60, color="#999999", edgecolor="black", label="a word through the text side")
    ax.axhline(0, color="#cccccc", lw=0.8, zorder=0)
    ax.axvline(0, color="#cccccc", lw=0.8, zorder=0)
    ax.set_xlabel("along the cats' main direction (cosine)")
    ax.set_ylabel("along the dogs' main direction, at right angles to the cats' (cosine)")
    ax.set_title("every cat and dog class, projected on two directions")
    ax.legend(loc="upper right", fontsize=8)


def _cat_names(ax: Axes, cats: list[list[float]], names: list[str]) -> None:
    """The cat classes' names in a column to their right, each with a line to its point (the
    five points sit too close together to label in place)."""
    if not names:
        return
    order = sorted(range(len(cats)), key=lambda i: -cats[i][1])
    step = 0.07
    right = max(x for x, _ in cats) + 0.12
    top = sum(y for _, y in cats) / len(cats) + step * (len(order) - 1) / 2
    for rank, i in enumerate(order):
        ax.annotate(names[i], (cats[i][0], cats[i][1]), xytext=(right, top - step * rank), fontsize=7, color="#884411", va="center",
                    arrowprops={"arrowstyle": "-", "color": "#bbbbbb", "lw": 0.6})  # fmt: skip
    ax.set_xlim(right=right + 0.22)
    ax.set_xticks([t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= 1])  # the names' column is no cosine


def _angles(ax: Axes, angles: list[float]) -> None:
    ordinal = ["1st", "2nd", "3rd"] + [f"{i}th" for i in range(4, len(angles) + 1)]
    bars = ax.bar(ordinal[: len(angles)], angles, color="#888888")
    ax.bar_label(bars, [f"{a:.0f}°" for a in angles], fontsize=9, padding=-16, color="white")  # inside: clear of the 90° line
    ax.axhline(90, color="black", ls="--", lw=0.8)
    ax.text(-0.4, 91.5, "90°: no direction in common", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("degrees")
    ax.set_xlabel("principal angle, smallest first")
    ax.set_title("angles between the cat and dog subspaces")


def _picking(ax: Axes, curve: dict) -> None:
    dims = sorted(curve, key=int)
    ax.plot([int(d) for d in dims], [100 * curve[d]["top1"] for d in dims], marker="o", color="#228833")
    ax.set_xscale("log", base=2)
    ax.set_xticks([int(d) for d in dims], dims)
    ax.set_ylim(0, None)
    ax.set_xlabel("joint directions kept (largest |λ| first)")
    ax.set_ylabel("top-1 on unseen classes (%)")
    ax.set_title("the bridge on its top directions")
    ax.grid(alpha=0.3)
