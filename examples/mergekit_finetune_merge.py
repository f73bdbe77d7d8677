"""Merge full fine-tunes from a mergekit YAML config with eigenmix, then print which tensors of
the base model the merge changed and by how much.

    .venv/bin/python examples/mergekit_finetune_merge.py --base BASE --models FT_A FT_B --out merged
    .venv/bin/python examples/mergekit_finetune_merge.py --method ties --density 0.5 --force

eigenmix reads a mergekit config as it is (task_arithmetic, ties, dare_ties, linear) and writes
a full model in the base's own layout, as `mergekit-yaml config.yml merged` does; the config
is printed first. Without --base and --models the script makes its own small models in a
temporary folder: a tiny random BERT as the base and two "fine-tunes" of it, each changing
different tensors (seeded noise standing in for training).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from eigenmix.io import CheckpointReader
from eigenmix.io.atomic import destination
from eigenmix.merging.config import load_config
from eigenmix.merging.run import REPORT, run_merge


def tiny_models(folder: Path) -> tuple[Path, list[Path]]:
    """A tiny random BERT, and two fine-tunes of it: one changes layer 0's attention, one layer 1's MLP."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(str(folder / "base"))  # config.json + model.safetensors
    weights = load_file(str(folder / "base" / "model.safetensors"))
    for i, part in enumerate(["layer.0.attention.", "layer.1.intermediate."]):
        g = torch.Generator().manual_seed(i)
        (folder / f"finetune{i}").mkdir()
        tuned = {k: v + 0.005 * torch.randn(v.shape, generator=g) if part in k else v for k, v in weights.items()}
        save_file(tuned, str(folder / f"finetune{i}" / "model.safetensors"))
    return folder / "base", [folder / "finetune0", folder / "finetune1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="the base model's folder (safetensors); default: a tiny BERT made here")
    parser.add_argument("--models", nargs="+", type=Path, help="fine-tuned model folders of the same architecture")
    parser.add_argument("--method", default="ties", choices=["task_arithmetic", "ties", "dare_ties", "linear"], help="merge_method")
    parser.add_argument("--density", type=float, default=0.5, help="ties, dare_ties: the share of each task vector kept")
    parser.add_argument("--lam", type=float, default=1.0, help="mergekit's lambda (task_arithmetic, ties, dare_ties): the scale")
    parser.add_argument("--out", type=Path, default=Path("runs/examples/mergekit-merged"), help="the merged model's folder")
    parser.add_argument("--force", action="store_true", help="replace an earlier merge at --out")
    args = parser.parse_args()
    if (args.base is None) != (args.models is None):
        parser.error("give both --base and --models, or neither")

    with tempfile.TemporaryDirectory() as tmp:
        base, models = (args.base, args.models) if args.base else tiny_models(Path(tmp))
        density = {"density": args.density} if args.method in ("ties", "dare_ties") else {}
        config = {  # exactly what mergekit-yaml reads
            "merge_method": args.method,
            "base_model": str(base),
            "models": [{"model": str(m), "parameters": {"weight": 1.0, **density}} for m in models],
            "parameters": {"lambda": args.lam} if args.method != "linear" else {},
            "dtype": "float32",
        }
        print(yaml.safe_dump(config, sort_keys=False))
        (Path(tmp) / "mergekit.yml").write_text(yaml.safe_dump(config))
        cfg = load_config(Path(tmp) / "mergekit.yml")  # translated into eigenmix's config, checked before any work
        dest = destination(args.out, overwrite=args.force, inputs=cfg.inputs(), marker=REPORT)
        run = run_merge(cfg, dest)  # layer by layer, streamed to disk, written atomically
        print(f"merged {len(models)} fine-tunes with {args.method} in {run.seconds:.2f} s → {args.out}")

        with CheckpointReader(base) as before, CheckpointReader(args.out) as after:  # read one tensor at a time
            changes = {name: float((after.get(name).double() - w.double()).norm()) for name, w in before.items()}
    for name, change in changes.items():
        if change > 0:
            print(f"changed  {name:55s} |W_merged - W_base| = {change:.6f}")
    print(f"{sum(c == 0 for c in changes.values())} of {len(changes)} tensors unchanged")


if __name__ == "__main__":
    main()
