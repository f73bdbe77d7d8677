"""EfficientNet-Lite0 forward time against input resolution, to pick one for a vision benchmark.

    python benchmarks/vision_resolution.py --json benchmarks/results/vision_resolution.json

CPU, float32, ``--threads`` (2) torch threads, a batch of ``--batch`` (64) Fashion-MNIST
test images (28 px grayscale, from Debian's ``dataset-fashion-mnist``; random images where
it is missing) preprocessed to each of ``--sizes`` (224, 112, 96, 64) px, then the forward
of ``eigenmix.vision.load_efficientnet_lite0()`` (logits; the pooled features cost the
same less one 1280 × 1000 matmul) under ``torch.inference_mode``. After one warm-up per
size, ``--repeats`` (5) rounds each run every size once (interleaved, so that a busy
machine slows all sizes alike); ``forward_s`` is the median, ``forward_min_s`` the fastest.
``preprocess_s``: crop, resize and scale of the batch (median). ``feature_dim``: the pooled
feature's width; ``feature_map``: the last convolution's spatial size. The padding is the
model code's static one, fixed for 224 px: it is TensorFlow's "SAME" at every multiple of
32 px; at 112 px the last stride-2 conv (input 7 × 7) gives 3 × 3 where "SAME" gives 4 × 4.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench_common import write_result
from eigenmix.data.images import fashion_mnist
from eigenmix.errors import InvalidInputError
from eigenmix.vision import features, load_efficientnet_lite0, preprocess


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def images(batch: int) -> tuple[torch.Tensor, str]:
    try:
        return fashion_mnist("test", limit=batch).images, "fashion-mnist test"
    except InvalidInputError:
        return torch.randint(0, 256, (batch, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)), "random"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/vision_resolution.json"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112, 96, 64])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_efficientnet_lite0()
    batch, source = images(args.batch)
    inputs = {size: preprocess(batch, size) for size in args.sizes}
    times: dict[int, list[float]] = {size: [] for size in args.sizes}
    with torch.inference_mode():
        for size in args.sizes:
            model(inputs[size])  # warm-up
        for _ in range(args.repeats):
            for size in args.sizes:
                times[size].append(seconds(lambda size=size: model(inputs[size])))
        rows = []
        for size in args.sizes:
            maps = model.extract_features(inputs[size][:1])
            forward = statistics.median(times[size])
            row = {
                "size": size,
                "forward_s": forward,
                "forward_min_s": min(times[size]),
                "images_per_s": args.batch / forward,
                "preprocess_s": statistics.median(seconds(lambda size=size: preprocess(batch, size)) for _ in range(args.repeats)),
                "feature_dim": int(features(model, inputs[size][:1]).shape[1]),
                "feature_map": list(maps.shape[2:]),
            }
            print(f"{size:>4} px: forward {forward:.3f} s / {args.batch} images ({row['images_per_s']:.0f} /s)", flush=True)
            rows.append(row)
    write_result(args.json, {"batch": args.batch, "images": source, "threads": args.threads, "repeats": args.repeats, "sizes": rows})


if __name__ == "__main__":
    main()
