"""Fit a spectral bridge between EfficientNet-Lite0's image features and all-MiniLM-L6-v2's
text embeddings from paired anchors, then classify Fashion-MNIST test images zero-shot, from
the names of their classes alone.

    .venv/bin/python examples/bridge_zero_shot.py        # anchors: ImageNet's 1,000 classes (Debian's darknet names them)
    .venv/bin/python examples/bridge_zero_shot.py --image-anchors image.safetensors --text-anchors names.txt --images 20

Anchors are pairs: row i of the image side (a safetensors file with one tensor "features"
(n, 1280): Lite0 features, or classifier rows) and line i of the text file. By default they
are Lite0's ImageNet classifier rows and the ImageNet class names. The bridge keeps each
side's spectral basis, a joint space between them and one coefficient per joint direction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch.nn.functional as F
from safetensors.torch import load_file

from eigenmix.bridge import BridgeSettings, fit_bridge
from eigenmix.data.images import FASHION_MNIST_CLASSES, fashion_mnist
from eigenmix.errors import EigenmixError
from eigenmix.harness.anchors import image_anchors, imagenet_classes, text_embeddings
from eigenmix.vision import image_features, load_efficientnet_lite0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-anchors", type=Path, help='a safetensors file with one tensor "features" (n, 1280)')
    parser.add_argument("--text-anchors", type=Path, help="a text file of n lines, line i the text of image anchor i")
    parser.add_argument("--rank", type=int, default=384, help="directions kept of each side's spectral basis")
    parser.add_argument("--labels", default=",".join(FASHION_MNIST_CLASSES), help="the 10 class names, comma-separated, in order")
    parser.add_argument("--images", type=int, default=10, help="the first N Fashion-MNIST test images are classified")
    parser.add_argument("--size", type=int, default=64, help="image side the images are resized to (a multiple of 32)")
    args = parser.parse_args()
    labels = [name.strip() for name in args.labels.split(",")]
    if len(labels) != len(FASHION_MNIST_CLASSES):
        parser.error(f"--labels: give {len(FASHION_MNIST_CLASSES)} names, one per Fashion-MNIST class, in order")
    if (args.image_anchors is None) != (args.text_anchors is None):
        parser.error("give both --image-anchors and --text-anchors, or neither")

    if args.image_anchors is not None:
        X = load_file(str(args.image_anchors))["features"].double()  # (n, d_image)
        texts = [line.strip() for line in args.text_anchors.read_text().splitlines() if line.strip()]
    else:  # Lite0's 1,000 classifier rows and the names of their classes
        try:
            X, texts = image_anchors(), imagenet_classes()
        except EigenmixError as err:  # e.g. no ImageNet names: Debian's darknet is not installed
            parser.error(str(err))
    X = F.normalize(X, dim=-1)  # unit rows, as Lite0's unit image features below
    # unit MiniLM embeddings (averaged over a few prompt templates) of the anchor texts and the class names, in one pass
    Y = text_embeddings(texts + labels)  # (n + 10, 384)
    bridge = fit_bridge(X, Y[: len(texts)], BridgeSettings(image_rank=args.rank, text_rank=args.rank))
    chosen, seconds = bridge.info["chosen"], bridge.info["fit_seconds"]
    print(f"bridge from {len(texts)} anchor pairs: {bridge.rank} joint directions, chosen {chosen}, fitted in {seconds} s")

    images = fashion_mnist("test", limit=args.images)
    features = F.normalize(image_features(load_efficientnet_lite0(), images.images, args.size).double(), dim=-1)  # (N, 1280)
    scores = bridge.scores(features, Y[len(texts) :])  # (N, 10): CSLS similarities in the joint space
    predicted = scores.argmax(-1)
    for i in range(len(images)):
        truth, guess = labels[int(images.labels[i])], labels[int(predicted[i])]
        print(f"image {i:2d} label={truth:12s} predicted={guess:12s} score={float(scores[i, predicted[i]]):+.6f}")
    correct = int((predicted == images.labels).sum())
    print(f"zero-shot accuracy {correct}/{len(images)} (chance 1/{len(labels)})")


if __name__ == "__main__":
    main()
