"""Spectral MoE accuracy: all-MiniLM-L6-v2 fine-tuned with Spectral MoE layers, LoRA r=8
and SVF (E = 1, no gate or router), per task and on the mixture of tasks.

    python benchmarks/moe_accuracy.py --json benchmarks/results/moe_accuracy.json

Every method adapts the 36 attention and MLP linears of the encoder (``BERT_LINEARS``)
and trains with one recipe (the merge benchmark's: AdamW, encoder-side lr 2e-3, head lr
5e-3, 10% warm-up then linear decay, batches of 16 rows of similar length, 64 tokens, no
dropout), a linear head per task on mean-pooled states. Per task: ``--steps`` steps on
that task (train split minus nothing: no selection is made on the test split). Mixture:
one model, one head per task, ``--mixture-steps`` steps drawing the tasks in turn.
Accuracy on the first ``--test-rows`` test rows of each task. Methods:

- ``lora``: PEFT LoRA, rank 8, α = 16.
- ``svf``: ``SpectralMoELinear`` with E = 1, full rank, no gate or router: one learned
  scale per singular value (Transformer²'s SVF).
- ``moe``: ``SpectralMoELinear`` with E = ``--experts`` (8), full rank, the per-token
  router, gates and routers initialised to keep the pretrained outputs.

``svf`` and ``moe`` train through :func:`eigenmix.moe.param_groups`: their scales at
``--scales-lr-ratio`` (default the layer's ``scales_lr_ratio``, 30) times the encoder-side
lr; ``--scales-lr-ratio 1`` is the recipe of the first, committed run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

from bench_common import machine, write_result
from eigenmix.bench.settings import FULL_RECIPE
from eigenmix.data import Task, load_tasks
from eigenmix.inputs import TextInputs, mean_pool
from eigenmix.moe import SpectralMoELinear, convert, param_groups
from eigenmix.seeds import derived_seed
from eigenmix.train import BERT_LINEARS, load_encoder
from eigenmix.train.loop import fit

METHODS = ("lora", "svf", "moe")


def adapt(encoder: nn.Module, method: str, experts: int, scales_lr_ratio: float | None = None) -> nn.Module:
    """The encoder with ``method``'s trainable layers; everything else frozen."""
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(encoder, LoraConfig(r=8, lora_alpha=16, target_modules=BERT_LINEARS, lora_dropout=0.0))
    if method == "svf":
        convert(encoder, BERT_LINEARS, n_experts=1, gate=False)
    else:
        convert(encoder, BERT_LINEARS, n_experts=experts)
    for module in encoder.modules():
        if isinstance(module, SpectralMoELinear) and scales_lr_ratio is not None:
            module.scales_lr_ratio = scales_lr_ratio
    return encoder


def pooled(encoder: nn.Module, enc: dict) -> torch.Tensor:
    return mean_pool(encoder(**enc).last_hidden_state, enc["attention_mask"])  # (b, hidden)


@torch.no_grad()
def accuracy(encoder: nn.Module, tokenizer: object, head: nn.Linear, task: Task, rows: int) -> float:
    test = task.test[:rows]
    right = 0
    for i in range(0, len(test), 64):
        batch = test[i : i + 64]
        enc = TextInputs(tokenizer, FULL_RECIPE.max_length).batch(batch)
        right += int((head(pooled(encoder, enc)).argmax(-1) == torch.tensor([r.label for r in batch])).sum())
    return right / len(test)


def run(method: str, tasks: list[Task], steps: int, experts: int, test_rows: int, seed: int, scales_lr_ratio: float | None = None) -> dict:
    """Train one encoder (one head per task) on ``tasks`` in turn; test accuracy per task."""
    torch.manual_seed(derived_seed(seed, method + ":" + ",".join(t.name for t in tasks)))
    encoder, tokenizer = load_encoder()
    encoder.requires_grad_(False)
    encoder = adapt(encoder, method, experts, scales_lr_ratio)
    heads = nn.ModuleDict({t.name: nn.Linear(encoder.config.hidden_size, t.num_labels) for t in tasks})
    body = [p for p in encoder.parameters() if p.requires_grad]
    groups = [*param_groups(encoder, FULL_RECIPE.lr), {"params": list(heads.parameters()), "lr": FULL_RECIPE.head_lr}]
    model = nn.ModuleDict({"encoder": encoder, "heads": heads})
    recipe = FULL_RECIPE.model_copy(update={"steps": steps, "seed": seed})
    seconds, loss = fit(model, lambda name, enc: heads[name](pooled(encoder, enc)), tasks, tokenizer, groups, recipe, seed=seed)
    acc = {t.name: accuracy(encoder, tokenizer, heads[t.name], t, test_rows) for t in tasks}
    return {"accuracy": acc, "trainable_params": sum(p.numel() for p in body), "train_seconds": seconds, "final_loss": loss}


def markdown(result: dict) -> str:
    """Accuracy (%) per task and method, per-task runs and the mixture run, with trainable
    parameters and training seconds."""
    tasks = result["tasks"]
    lines = []
    for title, runs in (("per task (one model per task)", result["per_task"]), ("mixture (one model, a head per task)", None)):
        header = "| method | " + " | ".join(tasks) + " | avg | trainable params | train s |"
        lines += [f"**{title}**", "", header, "|---|" + "---:|" * (len(tasks) + 3)]
        for method in result["methods"]:
            if runs is None:
                run = result["mixture"][method]
                acc, params, seconds = run["accuracy"], run["trainable_params"], run["train_seconds"]
            else:
                acc = {t: runs[method][t]["accuracy"][t] for t in tasks}
                params = sum(runs[method][t]["trainable_params"] for t in tasks) // len(tasks)
                seconds = sum(runs[method][t]["train_seconds"] for t in tasks)
            average = 100 * sum(acc.values()) / len(tasks)
            cells = [f"{100 * acc[t]:.1f}" for t in tasks] + [f"{average:.1f}", f"{params:,}", f"{seconds:.0f}"]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def merged(old: dict, new: dict, note: dict) -> dict:
    """``old`` with ``new``'s entries (per task and mixture, per method) in place of its own,
    and ``note`` (which entries were rerun, when, with which code) appended to ``reruns``."""
    if old["tasks"] != new["tasks"] or old["test_rows"] != new["test_rows"] or old["experts"] != new["experts"]:
        raise SystemExit("--update: the existing result has other tasks, test rows or experts than this run")
    same = ("steps", "mixture_steps", "lr", "head_lr", "batch_size", "max_length", "warmup")
    if any(old["recipe"][key] != new["recipe"][key] for key in same):
        raise SystemExit("--update: the existing result was trained with another recipe (steps, lr, batches)")
    ratios = old["recipe"].get("scales_lr_ratio", {m: 1.0 for m in old["methods"] if m != "lora"})
    return old | {
        "methods": old["methods"] + [m for m in new["methods"] if m not in old["methods"]],
        "recipe": old["recipe"] | {"scales_lr_ratio": ratios | new["recipe"]["scales_lr_ratio"]},
        "per_task": {m: old["per_task"].get(m, {}) | new["per_task"].get(m, {}) for m in old["methods"] + new["methods"]},
        "mixture": old["mixture"] | new["mixture"],
        "reruns": [*old.get("reruns", []), note],
    }


def code_version() -> str:
    """The commit this runs on (``+dirty`` with uncommitted changes to the package or this script)."""
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    paths = ["src", "benchmarks/moe_accuracy.py"]
    dirty = subprocess.run(["git", "status", "--porcelain", *paths], cwd=root, capture_output=True, text=True).stdout
    return head + ("+dirty" if dirty.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the result")
    parser.add_argument("--tasks", default=None, help="comma-separated (default: the 8 bundled tasks)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=200, help="steps per task, per-task runs")
    parser.add_argument("--mixture-steps", type=int, default=800, help="steps of the mixture run (tasks in turn)")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--test-rows", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scales-lr-ratio", type=float, default=None, help="svf/moe scales' lr / encoder lr (default 30)")
    parser.add_argument("--update", action="store_true", help="rerun --methods: keep the other entries of --json")
    args = parser.parse_args()
    tasks = load_tasks(names=args.tasks.split(",") if args.tasks else None)
    methods = args.methods.split(",")
    ratio = SpectralMoELinear.scales_lr_ratio if args.scales_lr_ratio is None else args.scales_lr_ratio
    old = json.loads(args.json.read_text()) if args.update else None
    code = code_version()  # the code that trains, before anyone commits during a long run
    start = time.perf_counter()
    per_task: dict[str, dict] = {m: {} for m in methods}
    mixture: dict[str, dict] = {}

    def save() -> None:  # after every stage, so that a cut-off run keeps what it finished
        result = {
            "tasks": [t.name for t in tasks],
            "methods": methods,
            "recipe": FULL_RECIPE.model_dump()
            | {"steps": args.steps, "mixture_steps": args.mixture_steps, "scales_lr_ratio": {m: ratio for m in methods if m != "lora"}},
            "experts": args.experts,
            "test_rows": args.test_rows,
            "per_task": per_task,
            "mixture": mixture,
            "total_seconds": time.perf_counter() - start,
        }
        if old is not None:
            rerun = {m: [t for t in per_task[m]] for m in methods}
            note = {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "code": code,
                "per_task": rerun, "mixture": list(mixture), "scales_lr_ratio": ratio, "machine": machine(),
            }  # fmt: skip
            result = merged(old, result, note)
        write_result(args.json, result)
        args.json.with_suffix(".md").write_text(markdown(result))

    for method in methods:
        for task in tasks:
            per_task[method][task.name] = run(method, [task], args.steps, args.experts, args.test_rows, args.seed, args.scales_lr_ratio)
            print(method, task.name, per_task[method][task.name], flush=True)
        save()
    for m in methods:
        mixture[m] = run(m, tasks, args.mixture_steps, args.experts, args.test_rows, args.seed, args.scales_lr_ratio)
        print("mixture", m, mixture[m], flush=True)
        save()


if __name__ == "__main__":
    main()
