"""Are the attributions of ``eigenmix explain`` faithful? Deletion, insertion, module
identification and direction meanings on the 8-task benchmark's adapters and test rows.

    python benchmarks/explain_faithfulness.py --json benchmarks/results/explain/faithfulness.json

The explained model is the benchmark's ``spectral`` merge of the 8 cached adapters at the
scale the merge benchmark chose on validation (read from
``benchmarks/results/multitask_calibrated/results.json``); its directions come out of
``from_merge`` as every CLI explanation's do (λ fitted; no residual for this merge). For
``--rows`` test rows per task, one recorded pass gives each row's attribution; then:

- **deletion**: per row, the top-m directions (by their share of their layer's update on
  that row, ranked over every layer), m random ones, or the m least attributed (smallest
  |share|) are removed from the merged model for that row only; recorded: the drop in
  accuracy and in the true-class logit margin of the row's task head;
- **insertion**: from the base model, only the row's top-m directions are added; recorded:
  how often the prediction equals the row's own adapter's prediction (alone, at scale 1);
- **module identification**: how often the row's top part (over every layer) is its own
  task's adapter, per task;
- **direction meanings**: the 5 strongest directions of 3 tasks' modules, with the tokens
  that excite them most in the probe rows.

It also writes the report of this explanation (``--report``, default ``runs/explain``) and
a screenshot of its top (headless Chromium) and its task × module figure next to the JSON.
Module identification is also given with each module's share taken relative to its mean
share over the probe rows (modules of larger norm otherwise take the top place on most rows).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console

from bench_common import write_result
from eigenmix.bench.cache import default_cache_dir
from eigenmix.bench.runner import ensure_adapters, load_bench_tasks
from eigenmix.bench.settings import make_settings
from eigenmix.compose import Library
from eigenmix.data.inputs import InputRow
from eigenmix.explain import Explanation, Recorder, Row, figures, from_library, from_merge, shares
from eigenmix.explain.report import report_html
from eigenmix.harness.backbones import Backbone
from eigenmix.harness.evaluator import load_head
from eigenmix.inputs import TextInputs, mean_pool
from eigenmix.io import read_lora_adapter
from eigenmix.merging import merge
from eigenmix.train import load_encoder
from eigenmix.train.encoder import MINILM_ID

RESULTS = Path(__file__).parent / "results" / "multitask_calibrated" / "results.json"
MEANINGS = ("sst2", "trec", "ag_news")


def margins(features, heads, tasks, labels):
    """Per row: the true-class margin (its logit minus the largest other) and correctness."""
    out, right = torch.empty(len(tasks)), torch.empty(len(tasks), dtype=torch.bool)
    for i, (task, label) in enumerate(zip(tasks, labels, strict=True)):
        logits = features[i] @ heads[task].weight.T + heads[task].bias
        other = logits.clone()
        other[label] = -float("inf")
        out[i], right[i] = logits[label] - other.max(), logits.argmax() == label
    return out, right


def predictions(features, heads, tasks):
    return torch.tensor([int((features[i] @ heads[t].weight.T + heads[t].bias).argmax()) for i, t in enumerate(tasks)])


def run_pass(encoder, recorder, batches, keep_of=None, record=False):
    """Mean-pooled features ``(rows, hidden)`` with per-row kept directions ``keep_of(rows) → layer → (rows, D)``."""
    feats = {}
    for rows, batch in batches:
        keep = keep_of(rows) if keep_of is not None else None
        out = recorder.run(encoder.model, batch, rows, keep=keep, record=record)
        for j, f in zip(rows, mean_pool(out.last_hidden_state, batch["attention_mask"]), strict=True):
            feats[j] = f
    return torch.stack([feats[i] for i in range(len(feats))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=50, help="test rows per task")
    parser.add_argument("--ms", default="1,4,16,64")
    parser.add_argument("--report", type=Path, default=Path("runs/explain"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    ms = [int(m) for m in args.ms.split(",")]
    settings = make_settings(None)
    tasks = load_bench_tasks(settings, None)
    folders = ensure_adapters(tasks, settings, default_cache_dir(), Console())
    names = [t.name for t in tasks]
    modules = [read_lora_adapter(folders[n], name=n) for n in names]
    heads = {n: load_head(folders[n]) for n in names}
    chosen = json.loads(RESULTS.read_text())["methods"]["spectral"]["chosen_params"]
    library = Library()
    for m in modules:
        library.add(m)
    merged = merge(modules, "spectral", **chosen)
    directions = from_merge(merged.layers, library)
    assert all(int(d.owner.max()) < len(names) for d in directions.values()), "the spectral merge is a reweighting: no residual"

    model, tokenizer = load_encoder()
    encoder = Backbone(MINILM_ID, model.eval().requires_grad_(False), TextInputs(tokenizer, settings.recipe.max_length))
    rows, labels = [], []
    for t in tasks:
        for r in t.task.test[: args.rows]:
            rows.append(InputRow(len(rows) + 1, r.text, r.text_pair, t.name))
            labels.append(r.label)
    row_tasks = [r.group for r in rows]
    batches = encoder.batches(rows, 32)
    layers = [name for name, _ in model.named_modules() if name in directions]

    recorder = Recorder(model, directions, len(names), len(rows))
    tokens = encoder.tokens(batches)
    t0 = time.perf_counter()
    full = run_pass(encoder, recorder, batches, record=True)
    explain_seconds = time.perf_counter() - t0
    probe = tuple(Row(r.line, r.text, r.group, tokens[i], r.text_pair) for i, r in enumerate(rows))
    ex = Explanation("spectral merge of the 8 benchmark adapters", "merged", tuple(names), tuple(layers), directions,
                     recorder.tallies, recorder.tokens, probe, {"scale": chosen})  # fmt: skip

    # every direction of every layer, per row: its share of its layer's update on that row
    sizes = [int(directions[layer].sigma.shape[0]) for layer in layers]
    numerators = [recorder.tallies[layer].directions for layer in layers]  # (R, D) each
    share = torch.cat([shares(n, n.sum(1, keepdim=True)).float() for n in numerators], 1)  # (R, Σ D): of its layer's update
    g = torch.Generator().manual_seed(args.seed)
    random_order = torch.stack([torch.randperm(share.shape[1], generator=g) for _ in range(len(rows))])
    orders = {
        "top": share.argsort(1, descending=True),
        "random": random_order,
        "least": share.abs().argsort(1),
    }

    def keep_of(order, m, invert=False):
        def make(chunk):
            mask = torch.ones(len(chunk), share.shape[1]) if not invert else torch.zeros(len(chunk), share.shape[1])
            idx = order[list(chunk), :m]
            mask.scatter_(1, idx, 0.0 if not invert else 1.0)
            return dict(zip(layers, mask.split(sizes, 1), strict=True))

        return make

    base_margin, base_right = margins(full, heads, row_tasks, labels)
    deletion = {}
    for name, order in orders.items():
        for m in ms:
            f = run_pass(encoder, recorder, batches, keep_of(order, m))
            mg, right = margins(f, heads, row_tasks, labels)
            deletion.setdefault(name, {})[str(m)] = {
                "margin_drop": round(float((base_margin - mg).mean()), 5),
                "accuracy_drop": round(float(base_right.float().mean() - right.float().mean()), 5),
                "prediction_changed": round(
                    float((predictions(f, heads, row_tasks) != predictions(full, heads, row_tasks)).float().mean()), 5
                ),
            }
    ratio = {
        str(m): round(deletion["top"][str(m)]["margin_drop"] / max(abs(deletion["random"][str(m)]["margin_drop"]), 1e-9), 2) for m in ms
    }

    # insertion: base model plus the row's top-m directions, against the row's own adapter alone
    alone = Recorder(model, from_library(library), len(names), len(rows))
    recorder.close()
    try:
        own = torch.tensor([names.index(t) for t in row_tasks])
        by_layer = {layer: alone.directions[layer].owner for layer in layers}

        def only_own(chunk):
            return {layer: (by_layer[layer][None, :] == own[list(chunk)][:, None]).float() for layer in layers}

        adapter_pred = predictions(run_pass(encoder, alone, batches, only_own), heads, row_tasks)
    finally:
        alone.close()
    recorder = Recorder(model, directions, len(names), len(rows))
    try:
        base_pred = predictions(run_pass(encoder, recorder, batches, keep_of(orders["top"], 0, invert=True)), heads, row_tasks)
        insertion = {"0 (base model)": round(float((base_pred == adapter_pred).float().mean()), 5)}
        for m in ms:
            for name in ("top", "random"):
                pred = predictions(run_pass(encoder, recorder, batches, keep_of(orders[name], m, invert=True)), heads, row_tasks)
                insertion.setdefault(name, {})[str(m)] = round(float((pred == adapter_pred).float().mean()), 5)
        insertion["all (merged model)"] = round(float((predictions(full, heads, row_tasks) == adapter_pred).float().mean()), 5)
    finally:
        recorder.close()

    row_shares = ex.row_shares()
    top_part = row_shares.argmax(1)
    identification = {n: round(float((top_part[own == k] == k).float().mean()), 4) for k, n in enumerate(names)}
    relative = (row_shares / row_shares.mean(0, keepdim=True)).argmax(1)  # each module's share over its mean share on the probe set
    relative_identification = {n: round(float((relative[own == k] == k).float().mean()), 4) for k, n in enumerate(names)}
    meanings = {n: ex.top_directions(names.index(n), 5, examples=8) for n in MEANINGS}

    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "report.html").write_text(report_html(ex), encoding="utf-8")
    folder = args.json.parent
    figures.DPI = 80  # the README's copy: small enough to commit
    (folder / "task_module.png").write_bytes(figures.group_part(ex))
    screenshot(args.report / "report.html", folder / "report_screenshot.png")
    write_result(args.json, {
        "command": "python benchmarks/explain_faithfulness.py --json benchmarks/results/explain/faithfulness.json",
        "merge": {"method": "spectral", **chosen}, "rows_per_task": args.rows, "rows": len(rows), "directions": int(share.shape[1]),
        "explain_seconds": round(explain_seconds, 2), "total_seconds": round(time.perf_counter() - start, 1),
        "merged_accuracy": round(float(base_right.float().mean()), 4),
        "merged_margin_mean": round(float(base_margin.mean()), 4),
        "merged_margin_mean_abs": round(float(base_margin.abs().mean()), 4),
        "deletion": deletion, "deletion_top_over_random_margin": ratio,
        "insertion_agreement_with_own_adapter": insertion,
        "module_identification": identification,
        "module_identification_mean": round(sum(identification.values()) / len(identification), 4),
        "module_identification_relative": relative_identification,
        "module_identification_relative_mean": round(sum(relative_identification.values()) / len(relative_identification), 4),
        "direction_meanings": meanings,
    })  # fmt: skip


def screenshot(page: Path, out: Path) -> None:
    """The top of the report in headless Chromium (Debian's), as the browser test opens it."""
    import io
    import shutil

    from PIL import Image
    from playwright.sync_api import sync_playwright

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium: no screenshot (make browser)")
        return
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu"])
        try:
            view = b.new_page(viewport={"width": 1100, "height": 1400})
            view.goto(page.resolve().as_uri(), wait_until="load")
            shot = Image.open(io.BytesIO(view.screenshot()))
            small = shot.resize((shot.width * 3 // 5, shot.height * 3 // 5), Image.Resampling.LANCZOS).convert("RGB")
            small.quantize(128).save(out, optimize=True)  # small enough to commit
        finally:
            b.close()


if __name__ == "__main__":
    main()
