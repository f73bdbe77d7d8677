"""Training-step time of the merge benchmark's LoRA recipe with the base model's dropout
on and off, side by side in one run.

    python benchmarks/train_step.py --json benchmarks/results/train_step.json

The same 16-row batches of ag_news (the benchmark's slowest single-text task) through
all-MiniLM-L6-v2 with PEFT LoRA r=8 on the 36 attention and MLP linears; forward,
backward and AdamW step. Modes alternate in ``--rounds`` rounds of ``--steps`` steps; each
mode's time is the median over rounds of the mean step time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench_common import write_result
from eigenmix.data import load_tasks
from eigenmix.inputs import TextInputs
from eigenmix.train import BERT_LINEARS, EncoderClassifier, load_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the result")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    encoder, tokenizer = load_encoder()
    model = EncoderClassifier(get_peft_model(encoder, LoraConfig(r=8, lora_alpha=16, target_modules=BERT_LINEARS)), 384, 4)
    rows = load_tasks(names=["ag_news"])[0].train[: 16 * args.steps]
    batches = [rows[i : i + 16] for i in range(0, len(rows), 16)]
    encoded = [(TextInputs(tokenizer, 64).batch(b), torch.tensor([r.label for r in b])) for b in batches]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def round_time(dropout: bool) -> float:
        model.train(dropout)
        start = time.perf_counter()
        for enc, labels in encoded:
            loss = torch.nn.functional.cross_entropy(model(**enc), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / len(encoded)

    round_time(False)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for dropout in (True, False):
            times[dropout].append(round_time(dropout))
    on, off = statistics.median(times[True]), statistics.median(times[False])
    write_result(
        args.json,
        {
            "task": "ag_news",
            "batch_rows": 16,
            "max_length": 64,
            "step_seconds_dropout_on": on,
            "step_seconds_dropout_off": off,
            "dropout_off_speedup": on / off,
            "rounds": {"on": times[True], "off": times[False]},
        },
    )


if __name__ == "__main__":
    main()
