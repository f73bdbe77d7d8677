"""Explain a merge on a few rows: which module's directions carry what share of the merged
update, per row and per task of the rows, and each module's strongest direction.

    .venv/bin/python examples/explain_prediction.py --adapters ADAPTERS/trec ADAPTERS/sst2
    .venv/bin/python examples/explain_prediction.py --adapters A B --method ties --html report.html

Module k's share of a row is ⟨y_k, y⟩ / ‖y‖², summed over its tokens and the layers, where
y = ΔW x is the merged update and y_k module k's part of it; the shares add up to 1 (what no
reweighting of the modules' directions gives, as after TIES, is one more part, "residual").
Rows: --per-task test rows of each adapter's task (its head.json names it; bundled data).
Without --adapters, two tiny ones (trec, sst2) are trained first in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import eigenmix
from eigenmix.compose import Library
from eigenmix.data import bundled_data_dir, load_task
from eigenmix.explain import RESIDUAL, Explanation, Recorder, Row, from_merge, record_rows
from eigenmix.inputs import TextInputs
from eigenmix.io import read_lora_adapter
from eigenmix.train import LoraRecipe, load_encoder, train_adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", nargs="+", type=Path, help="adapter folders of all-MiniLM-L6-v2 (default: train two)")
    parser.add_argument("--method", default="task_arithmetic", help="the merge method (`eigenmix methods`)")
    parser.add_argument("--per-task", type=int, default=3, help="test rows of each adapter's task")
    parser.add_argument("--html", type=Path, help="also write the report, figures included, to this file")
    args = parser.parse_args()

    modules, tasks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.adapters or [Path(tmp) / "trec", Path(tmp) / "sst2"]:
            if args.adapters is None:  # a tiny adapter and head, 20 steps
                train_adapter(load_task(bundled_data_dir() / folder.name), LoraRecipe(steps=20, batch_size=8, max_length=32), folder)
            tasks.append(json.loads((folder / "head.json").read_text())["task"])  # eigenmix.train records the task
            modules.append(read_lora_adapter(folder, name=tasks[-1]))
    merged = eigenmix.merge(modules, args.method)
    library = Library()  # the modules' own directions (their exact SVDs), to attribute the merge to
    for module in modules:
        library.add(module)
    directions = from_merge(merged.layers, library)  # per layer: each module direction at its fitted λ, plus any residual
    residual = any(bool((d.owner == len(library)).any()) for d in directions.values())
    parts = (*library.names, RESIDUAL) if residual else library.names

    encoder, tokenizer = load_encoder()
    text = TextInputs(tokenizer, max_length=64)
    examples = [(task, r) for task in tasks for r in load_task(bundled_data_dir() / task).test[: args.per_task]]
    batches = text.batches([r for _, r in examples], 16)  # (row indices, padded batch) each
    recorder = Recorder(encoder, directions, len(parts), len(examples))  # hooks: add the merged update, record each direction
    record_rows(encoder, recorder, batches)
    recorder.close()
    tokens = text.tokens(batches)
    rows = tuple(Row(i, r.text, task, tokens[i], r.text_pair) for i, (task, r) in enumerate(examples))
    layers = tuple(name for name, _ in encoder.named_modules() if name in directions)
    ex = Explanation(f"{args.method} merge", "merged", parts, layers, directions, recorder.tallies, recorder.tokens, rows)

    print(f"{args.method} merge of {', '.join(library.names)}: each part's share of the update")
    for row, shares in zip(rows, ex.row_shares(), strict=True):  # (rows, parts)
        print(f"row {row.line:2d} task={row.group:8s} " + " ".join(f"{p}={float(s):+.4f}" for p, s in zip(parts, shares, strict=True)))
    for group, shares in zip(ex.groups(), ex.group_shares(), strict=True):  # (tasks, parts)
        print(f"all {group:8s} rows " + " ".join(f"{p}={float(s):+.4f}" for p, s in zip(parts, shares, strict=True)))
    for k, part in enumerate(parts):
        for d in ex.top_directions(k, n=1, examples=1):
            print(f"{part}'s strongest direction: {d['layer']} #{d['index']}, share {d['share']:.3f}, top token {d['top'][0]['token']!r}")
    if args.html is not None:
        from eigenmix.explain.report import report_html

        args.html.write_text(report_html(ex))
        print(f"wrote {args.html}")


if __name__ == "__main__":
    main()
