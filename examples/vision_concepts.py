"""Compose image concept modules, conv LoRA adapters on EfficientNet-Lite0 each with its own
"is it a ...?" head, two ways, and ask every head about a few Fashion-MNIST test images: on
one merged model, and on a live library that routes each image between the concepts.

    .venv/bin/python examples/vision_concepts.py --adapters adapters/sneaker adapters/trouser
    .venv/bin/python examples/vision_concepts.py --concepts Sneaker Trouser Bag --steps 80 --top-k 1

Without --adapters, one concept module per --concepts class (one-vs-rest on Fashion-MNIST's
train split, --steps steps at --size px) is trained first with eigenmix.vision, into
--train-to (default: a temporary folder). Needs Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

import eigenmix
from eigenmix.compose import Library, RoutedModel
from eigenmix.compose.routers import SpectralRouter
from eigenmix.data.images import fashion_mnist
from eigenmix.io import read_lora_adapter, write_lora_adapter
from eigenmix.vision import ImageLoraRecipe, image_features, inputs, load_efficientnet_lite0, one_vs_rest, train_image_adapter


def train_concepts(folder: Path, concepts: list[str], steps: int, size: int) -> list[Path]:
    """One "is it <class>?" conv LoRA adapter and head per Fashion-MNIST class name."""
    train, test = fashion_mnist("train", limit=3000), fashion_mnist("test", limit=500)
    names = [re.sub(r"[^a-z0-9_.+-]", "_", c.lower()) for c in concepts]  # module names: letters, digits, _.+-
    for name, concept in zip(names, concepts, strict=True):
        train_image_adapter(one_vs_rest(name, train, test, concept), ImageLoraRecipe(steps=steps, batch_size=16, size=size), folder / name)
    return [folder / name for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", nargs="+", type=Path, help="image adapter folders made by eigenmix.vision (default: train)")
    parser.add_argument("--concepts", nargs="+", default=["Sneaker", "Trouser"], help="classes to train concept modules for")
    parser.add_argument("--steps", type=int, default=40, help="training steps of each concept module (without --adapters)")
    parser.add_argument("--size", type=int, default=32, help="image side the concept modules are trained at (a multiple of 32)")
    parser.add_argument("--train-to", type=Path, help="keep the trained concept modules in this folder")
    parser.add_argument("--method", default="tsv", help="the merge method (a spectral one: the result is written as a conv LoRA)")
    parser.add_argument("--top-k", type=int, default=None, help="routing: keep the k largest coefficients per image (default: all)")
    parser.add_argument("--images", type=int, default=8, help="the first N Fashion-MNIST test images are classified")
    args = parser.parse_args()

    images = fashion_mnist("test", limit=args.images)
    with tempfile.TemporaryDirectory() as tmp:
        folders = args.adapters or train_concepts(args.train_to or Path(tmp) / "concepts", args.concepts, args.steps, args.size)
        modules = [read_lora_adapter(f, name=f.name) for f in folders]  # a conv kernel as its matrix view (out, in·kh·kw)
        heads = {f.name: load_file(str(f / "head.safetensors")) for f in folders}  # "is it ...?": classes (other, <class>)
        size = json.loads((folders[0] / "head.json").read_text())["size"]  # the side the adapters were trained at
        # 1. merged: one conv LoRA adapter, loaded by PEFT on Lite0
        write_lora_adapter(eigenmix.merge(modules, args.method), Path(tmp) / "merged")
        merged = image_features(PeftModel.from_pretrained(load_efficientnet_lite0(), str(Path(tmp) / "merged")), images.images, size)
    # 2. routed: the concepts live beside a frozen Lite0, mixed per image
    library = Library()  # every concept per conv layer in its exact spectral form
    for module in modules:
        library.add(module)
    model = load_efficientnet_lite0()
    model._fc = nn.Identity()  # the model's output is then the pooled 1280-d feature the heads read
    routed = RoutedModel(model, library, SpectralRouter(top_k=args.top_k))  # hooks on the frozen convs
    with torch.no_grad():
        features = routed(inputs=inputs(size).pixels(images.images))  # (N, 1280), each image routed on its own
    weights = routed.routing()  # (N, K) each image's coefficients over the concepts

    def answers(feature: torch.Tensor) -> str:  # every concept head's P(it is its class)
        return " ".join(f"{n}={float(torch.softmax(feature @ h['weight'].T + h['bias'], -1)[1]):.4f}" for n, h in heads.items())

    print("is it ...? each concept's head on the merged model | on the routed one (the image's coefficients)")
    for i in range(len(images)):
        mix = " ".join(f"{n}={float(w):.4f}" for n, w in zip(heads, weights[i], strict=True))
        label = images.class_names[int(images.labels[i])]
        print(f"image {i:2d} label={label:12s} merged: {answers(merged[i])} | routed ({mix}): {answers(features[i])}")


if __name__ == "__main__":
    main()
