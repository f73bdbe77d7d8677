"""Merge two PEFT LoRA adapters of all-MiniLM-L6-v2 with a spectral method, write the merged
adapter, load it back with plain PEFT and embed one sentence with it.

    .venv/bin/python examples/merge_two_adapters.py --adapters ADAPTER_A ADAPTER_B --out merged
    .venv/bin/python examples/merge_two_adapters.py --method spectral --scale 0.5 --sentence "Is it raining?"

Without --adapters, two tiny adapters (bundled tasks trec and sst2, --steps steps each) are
trained first with eigenmix.train in a temporary folder (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from peft import PeftModel

import eigenmix
from eigenmix.data.inputs import InputRow
from eigenmix.inputs import TextInputs
from eigenmix.io import read_lora_adapter, write_lora_adapter
from eigenmix.train import load_encoder


def tiny_adapters(folder: Path, tasks: list[str], steps: int) -> list[Path]:
    """Train one small LoRA adapter (and head) per bundled task into ``folder``."""
    from eigenmix.data import load_tasks
    from eigenmix.train import LoraRecipe, train_adapter

    for task in load_tasks(names=tasks):
        train_adapter(task, LoraRecipe(steps=steps, batch_size=8, max_length=32, lr=5e-3), folder / task.name)
    return [folder / t for t in tasks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", nargs="+", type=Path, help="PEFT LoRA adapter folders of all-MiniLM-L6-v2 (default: train two)")
    parser.add_argument("--method", default="tsv", help="a spectral merge method (tsv, spectral, iso_c, ...; `eigenmix methods`)")
    parser.add_argument("--scale", type=float, default=1.0, help="the method's scale α")
    parser.add_argument("--out", type=Path, default=Path("runs/examples/merged"), help="where the merged adapter is written")
    parser.add_argument("--force", action="store_true", help="replace an earlier merged adapter at --out")
    parser.add_argument("--sentence", default="How far is the moon from the earth?", help="the sentence to embed")
    parser.add_argument("--steps", type=int, default=20, help="training steps of each tiny adapter (without --adapters)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folders = args.adapters or tiny_adapters(Path(tmp), ["trec", "sst2"], args.steps)
        modules = [read_lora_adapter(f) for f in folders]  # each layer kept as its LoRA factors B, A
        merged = eigenmix.merge(modules, args.method, scale=args.scale)  # per layer, in the modules' joint spectral basis
    ranks = [d.rank for d in merged.layers.values()]
    print(f"merged {len(modules)} adapters with {args.method}: {len(ranks)} layers, ranks {min(ranks)}-{max(ranks)}")
    write_lora_adapter(merged, args.out, overwrite=args.force)  # PEFT's adapter_config.json + adapter_model.safetensors
    print(f"wrote {args.out}")

    # Plain PEFT from here on: the merged adapter is an ordinary LoRA adapter of the base model.
    encoder, tokenizer = load_encoder()
    text = TextInputs(tokenizer)
    batch = text.batch([InputRow(0, args.sentence)])  # tokenised and padded as every eigenmix path does
    with torch.no_grad():
        base = text.pool(encoder(**batch), batch)[0]  # mean-pooled sentence embedding (384,)
        model = PeftModel.from_pretrained(encoder, str(args.out)).eval()
        embedding = text.pool(model(**batch), batch)[0]
    print(f"sentence: {args.sentence!r}")
    print("embedding[:6]:", " ".join(f"{v:.6f}" for v in embedding[:6].tolist()))
    print(f"norm: {embedding.norm():.6f}; cosine to the base model's embedding: {torch.cosine_similarity(embedding, base, 0):.6f}")


if __name__ == "__main__":
    main()
