"""``eigenmix bridge fit`` and ``eigenmix bridge classify``: a spectral bridge between an image
and a text encoder, and zero-shot classification of images from class names through it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from eigenmix.cli.console import make_console
from eigenmix.cli.options import FORCE_HELP

app = typer.Typer(help="A spectral bridge between EfficientNet-Lite0 and all-MiniLM-L6-v2.", no_args_is_help=True)

PREDICTIONS = "predictions.jsonl"
REPORT = "classify_report.json"


@app.command("fit")
def fit(
    config: Path = typer.Argument(..., help="A bridge config (YAML): anchors: imagenet, or image_anchors + text_anchors; fit: settings."),
    out: Path = typer.Option(..., "--out", help="Output folder: bridge.safetensors and bridge.json, written atomically."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Fit a bridge on paired anchors: each side's spectral basis, a joint space, one coefficient per joint direction."""
    from eigenmix.bridge import save_bridge
    from eigenmix.bridge.model import META
    from eigenmix.harness.bridge_run import fit_from_config, load_bridge_config
    from eigenmix.io.atomic import atomic_dir, destination

    console = make_console()
    cfg = load_bridge_config(config)
    dest = destination(out, overwrite=force, inputs=[config, *cfg.inputs()], marker=META)
    with console.status("embedding the anchors and fitting"):
        bridge = fit_from_config(cfg)
    with atomic_dir(dest) as tmp:
        save_bridge(bridge, tmp)
    chosen = bridge.info["chosen"]
    console.print(
        f"bridge of {bridge.rank} joint directions from {bridge.info['pairs']['all']} pairs "
        f"(eps {chosen['eps']:g}, power {chosen['power']:g}; {bridge.info['fit_seconds']:.1f} s) in {out}/"
    )


@app.command("classify")
def classify(
    bridge_dir: Path = typer.Argument(..., help="A bridge folder (eigenmix bridge fit)."),
    inputs: Path = typer.Option(..., "--inputs", help="Images: a folder of PNGs with labels.csv, or an IDX images file."),
    labels: str = typer.Option(..., "--labels", help="The class names, comma-separated (e.g. 'sandal,sneaker,ankle boot')."),
    out: Path = typer.Option(..., "--out", help=f"Output folder: {PREDICTIONS} (per image: prediction, scores) and {REPORT}."),
    image_size: int = typer.Option(64, "--image-size", min=32, help="Side the images are resized to (a multiple of 32)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="The first N images only."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Zero-shot: each image's class, the name whose text lands nearest its image features across the bridge."""
    from eigenmix.bridge import load_bridge
    from eigenmix.data.images import read_image_inputs
    from eigenmix.harness.bridge_run import classify as scores_of
    from eigenmix.harness.bridge_run import parse_labels
    from eigenmix.io.atomic import atomic_dir, destination

    console = make_console()
    names = parse_labels(labels)
    bridge = load_bridge(bridge_dir)
    dest = destination(out, overwrite=force, inputs=[bridge_dir, inputs], marker=REPORT)
    rows = read_image_inputs(inputs, limit=limit)
    with console.status(f"classifying {len(rows)} images"):
        scores = scores_of(bridge, rows, names, image_size)
    top = scores.argmax(-1).tolist()
    known = [r for r in rows if r.group in names]
    right = sum(1 for r, k in zip(rows, top, strict=True) if r.group is not None and r.group == names[k])
    accuracy_value = right / len(known) if known else None
    report = {"images": len(rows), "labels": names, "labelled_in_names": len(known), "accuracy": accuracy_value}
    with atomic_dir(dest) as tmp:
        with (tmp / PREDICTIONS).open("w") as fh:
            for r, k, s in zip(rows, top, scores.tolist(), strict=True):
                fh.write(
                    json.dumps({"line": r.line, "label": r.group, "prediction": names[k], "scores": dict(zip(names, s, strict=True))})
                    + "\n"
                )
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    accuracy = (
        f"; accuracy {100 * accuracy_value:.1f}% on the {len(known)} images labelled with these names" if accuracy_value is not None else ""
    )
    console.print(f"{len(rows)} images classified into {len(names)} names{accuracy}; in {out}/")


@app.command("explain")
def explain(
    bridge_dir: Path = typer.Argument(..., help="A bridge folder (eigenmix bridge fit)."),
    image: Path = typer.Option(..., "--image", help="A PNG (grayscale or RGB)."),
    text: str = typer.Option(..., "--text", help="A text, e.g. 'a tabby cat'."),
    out: Path = typer.Option(..., "--out", help="Output folder: explain.json, written atomically."),
    top: int = typer.Option(5, "--top", min=1, help="Joint directions shown (the largest terms of the pair's cosine)."),
    image_size: int = typer.Option(224, "--image-size", min=32, help="Side the image is resized to (a multiple of 32)."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Which joint directions carry an image-text pair, each read by the anchor texts furthest along it."""
    from eigenmix.bridge import load_bridge
    from eigenmix.harness.bridge_run import explain as explain_pair
    from eigenmix.io.atomic import atomic_dir, destination

    console = make_console()
    bridge = load_bridge(bridge_dir)
    dest = destination(out, overwrite=force, inputs=[bridge_dir, image], marker="explain.json")
    with console.status("embedding the pair and the anchors"):
        result = explain_pair(bridge, image, text, image_size, top)
    with atomic_dir(dest) as tmp:
        (tmp / "explain.json").write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"cosine {result['cosine']:.3f}; the top {len(result['directions'])} directions carry {result['top_share']:.3f} of it:")
    for d in result["directions"]:
        console.print(f"  direction {d['index']} (λ {d['lam']:.3g}): {d['share']:+.3f} — {', '.join(d['anchors'])}")
