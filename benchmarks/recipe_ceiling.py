"""Where the merge benchmark's individual adapters stand against the encoder's own ceiling.

    python benchmarks/recipe_ceiling.py --json benchmarks/results/recipe_ceiling.json [--tasks sst2,cola]

For each task, on the benchmark's split (48 validation rows carved from the bundled train
split, first 500 test rows), with the benchmark's schedule (AdamW, 10% warm-up then
linear decay, length-bucketed batches, 64 tokens, no dropout):

- ``lora_batch64``: the benchmark's LoRA recipe with 4× the rows per step (64, 400 steps);
- ``full_finetune``: every weight of all-MiniLM-L6-v2 trains (lr 5e-5, head 5e-3,
  batches of 32, 600 steps), the usual fine-tuning that published references report.

If full fine-tuning does no better than the LoRA adapter, the gap to a published number
is the encoder's and the data's, not the recipe's. One thread per run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench_common import write_result
from eigenmix.bench.settings import FULL_RECIPE
from eigenmix.data import Task, load_tasks
from eigenmix.harness.splits import carve
from eigenmix.seeds import derived_seed
from eigenmix.train import evaluate_adapter, train_adapter
from eigenmix.train.encoder import EncoderClassifier, load_encoder, predict
from eigenmix.train.loop import fit


def full_finetune(task: Task, steps: int = 600, batch: int = 32, lr: float = 5e-5) -> dict:
    torch.manual_seed(derived_seed(0, task.name))
    encoder, tokenizer = load_encoder()
    model = EncoderClassifier(encoder, encoder.config.hidden_size, task.num_labels)
    model.requires_grad_(True)
    groups = [{"params": list(encoder.parameters()), "lr": lr}, {"params": list(model.head.parameters()), "lr": 5e-3}]
    recipe = FULL_RECIPE.model_copy(update={"batch_size": batch, "steps": steps})
    seconds, loss = fit(model, lambda _, enc: model(**enc), [task], tokenizer, groups, recipe, seed=0)
    rows = list(task.test)
    accuracy = float((predict(model, tokenizer, rows, recipe.max_length) == torch.tensor([r.label for r in rows])).float().mean())
    return {"accuracy": accuracy, "train_seconds": round(seconds, 1), "final_loss": loss, "steps": steps, "batch_size": batch, "lr": lr}


def lora_batch64(task: Task, out: Path) -> dict:
    recipe = FULL_RECIPE.model_copy(update={"batch_size": 64})
    stats = train_adapter(task, recipe, out, overwrite=True)
    return {"accuracy": evaluate_adapter(out, task), "train_seconds": round(stats["train_seconds"], 1), "recipe": recipe.model_dump()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--tasks", default="sst2,cola")
    parser.add_argument("--work", type=Path, default=Path("runs/recipe_ceiling"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start, out = time.perf_counter(), {}
    for task in load_tasks(names=args.tasks.split(",")):
        bench_task = carve(task, 48, 500, 0).task
        out[task.name] = {
            "lora_batch64": lora_batch64(bench_task, args.work / task.name),
            "full_finetune": full_finetune(bench_task),
            "majority_share": max(sum(r.label == c for r in bench_task.test) for c in range(task.num_labels)) / len(bench_task.test),
        }
        print(task.name, out[task.name], flush=True)
    write_result(args.json, {"tasks": out, "total_seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
