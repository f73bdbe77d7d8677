"""Route a mixed batch of rows from different tasks through a live library of adapters: every
row gets its own coefficients over the modules in one forward pass (nothing is merged), and
the head of its top module classifies it.

    .venv/bin/python examples/route_mixed_stream.py --adapters ADAPTERS/trec ADAPTERS/sst2
    .venv/bin/python examples/route_mixed_stream.py --adapters A B --per-task 8 --top-k 1

Adapters as eigenmix.train saves them (head.safetensors and head.json beside each); the rows
are --per-task test rows of each adapter's task (bundled data), interleaved. Without
--adapters, two tiny ones (trec, sst2) are trained first in a temporary folder (about a
minute on 2 cores). `eigenmix route LIBRARY --inputs rows.jsonl` routes a file of rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from eigenmix.compose import Library, RoutedModel
from eigenmix.compose.routers import SpectralRouter
from eigenmix.data import bundled_data_dir, load_task
from eigenmix.data.inputs import InputRow
from eigenmix.inputs import TextInputs
from eigenmix.io import read_lora_adapter
from eigenmix.train import LoraRecipe, load_encoder, train_adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", nargs="+", type=Path, help="adapter folders of all-MiniLM-L6-v2 (default: train two)")
    parser.add_argument("--per-task", type=int, default=4, help="test rows of each adapter's task in the mixed batch")
    parser.add_argument("--temperature", type=float, default=0.2, help="the spectral router's softmax temperature")
    parser.add_argument("--top-k", type=int, default=None, help="keep the k largest coefficients per row (default: all)")
    args = parser.parse_args()

    library, tasks = Library(), []  # each module kept per layer in its exact spectral form U diag(σ) Vᵀ
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.adapters or [Path(tmp) / "trec", Path(tmp) / "sst2"]:
            if args.adapters is None:  # a tiny adapter and head, 20 steps
                train_adapter(load_task(bundled_data_dir() / folder.name), LoraRecipe(steps=20, batch_size=8, max_length=32), folder)
            meta = json.loads((folder / "head.json").read_text())  # its task and class names
            head = load_file(str(folder / "head.safetensors"))
            library.add(read_lora_adapter(folder), meta["task"], head=head, labels=tuple(meta["label_names"]))  # named by its task
            tasks.append(meta["task"])
    tests = [load_task(bundled_data_dir() / task).test[: args.per_task] for task in tasks]
    rows = [InputRow(0, r.text, r.text_pair, t) for group in zip(*tests, strict=False) for t, r in zip(tasks, group, strict=True)]

    encoder, tokenizer = load_encoder()
    router = SpectralRouter(temperature=args.temperature, top_k=args.top_k)  # scores module k by ‖V_kᵀ x‖ / ‖x‖
    routed = RoutedModel(encoder, library, router)  # forward hooks on the frozen encoder, which is not modified
    text = TextInputs(tokenizer, max_length=64)
    batch = text.batch(rows)  # one padded batch of the mixed rows
    with torch.no_grad():
        features = text.pool(routed(**batch), batch)  # (rows, 384) mean-pooled; each row routed on its own
    hits = 0
    for i, (row, weights, feature) in enumerate(zip(rows, routed.routing(), features, strict=True)):  # routing(): (rows, K)
        entry = list(library)[int(weights.argmax())]
        probs = torch.softmax(feature @ entry.head["weight"].T + entry.head["bias"], -1)  # the top module's own head
        label = (entry.labels or ())[int(probs.argmax())]  # its class names, kept in the library with the head
        mix = " ".join(f"{name}={float(w):.4f}" for name, w in zip(library.names, weights, strict=True))
        print(f"row {i:2d} task={row.group:8s} top={entry.name:8s} weights: {mix}  prediction: {label}")
        hits += entry.name == row.group
    print(f"{hits}/{len(rows)} rows routed to the module of their own task")


if __name__ == "__main__":
    main()
