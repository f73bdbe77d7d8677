"""Concept composition (``eigenmix bench vision``'s ``concepts`` part): a downstream task
built from its concept modules, against a LoRA trained on the downstream task.

- **Downstream**: Fashion-MNIST footwear, Sandal / Sneaker / Ankle boot (3-way).
- **Concepts**: one ``one_vs_rest`` adapter per footwear class ("is it a sandal"), the
  suite's recipe, cached like the task adapters; nothing of the 3-way task trains them.
- **Reference**: the same recipe trained on the footwear task, scored with its own head.
- **Head data**: ``per_class`` (64) labelled training images per class, ``draws`` seeded
  draws; each entry's head is the floor's probe (:func:`~eigenmix.bench.probe.fit_probe`)
  on the entry's features of those rows, the only downstream training.
- **Entries**: the frozen backbone (floor); each merge of ``MERGES`` of the three concepts;
  the routed library (``spectral`` from the adapters alone, ``uniform``); and the concept
  adapters' own binary heads with no label at all (the class whose "is it" margin is
  highest, each concept on its own adapter).
- **Choice**: the composition with the best 4-fold cross-validated accuracy on its own head
  rows (no test image takes part); ``gap_points`` is its test accuracy minus the reference's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

from eigenmix.bench.probe import fit_probe
from eigenmix.bench.runner import ensure_adapters
from eigenmix.bench.settings import BenchSettings
from eigenmix.compose import Library, RoutedModel, Router
from eigenmix.compose.routers import SpectralRouter, UniformRouter
from eigenmix.data import Task
from eigenmix.data.images import ImageExample, fashion_mnist, image_examples
from eigenmix.harness.evaluator import Evaluator, Split, load_head
from eigenmix.harness.splits import CarvedTask
from eigenmix.io import read_lora_adapter
from eigenmix.merging import merge
from eigenmix.modules import Module
from eigenmix.seeds import derived_seed

CLASSES = ("Sandal", "Sneaker", "Ankle boot")
MERGES: dict[str, tuple[str, dict[str, Any]]] = {
    "task_arithmetic(0.5)": ("task_arithmetic", {"scale": 0.5}),
    "task_arithmetic(1.0)": ("task_arithmetic", {"scale": 1.0}),
    "linear(mean)": ("linear", {"normalize": True}),
    "ties": ("ties", {}),
    "tsv": ("tsv", {}),
    "iso_c": ("iso_c", {}),
    "spectral": ("spectral", {}),
}
FOLDS = 4


def concept_tasks(train_rows: int, test_rows: int, seed: int) -> tuple[Task, list[Task]]:
    """The downstream task and one balanced "is it" task per class (Fashion-MNIST)."""
    from eigenmix.vision import class_subset, one_vs_rest

    train, test = fashion_mnist("train"), fashion_mnist("test")
    down = class_subset("footwear", train, test, CLASSES)
    downstream = Task("footwear", image_examples(down.train)[:train_rows], image_examples(down.test)[:test_rows], CLASSES)
    concepts = []
    for c in CLASSES:
        name = "is_" + c.lower().replace(" ", "_")
        t = one_vs_rest(name, train, test, c, seed=seed)
        concepts.append(Task(name, image_examples(t.train)[:train_rows], image_examples(t.test)[:test_rows], t.label_names))
    return downstream, concepts


def head_draws(rows: tuple[ImageExample, ...], per_class: int, draws: int, seed: int) -> list[list[ImageExample]]:
    """``draws`` seeded draws of ``per_class`` rows of each class, laid out class by class."""
    out = []
    for d in range(draws):
        g = torch.Generator().manual_seed(derived_seed(seed, f"concepts/head/{d}"))
        picks: list[ImageExample] = []
        for c in range(len(CLASSES)):
            pool = [r for r in rows if r.label == c]
            picks += [pool[i] for i in torch.randperm(len(pool), generator=g)[:per_class].tolist()]
        out.append(picks)
    return out


def cv_accuracy(features: Tensor, labels: Tensor, per_class: int) -> float:
    """Accuracy of the probe over ``FOLDS`` stratified folds of one draw's head rows."""
    fold = torch.arange(features.shape[0]) % per_class % FOLDS
    right = 0
    for k in range(FOLDS):
        held = fold == k
        head = fit_probe(features[~held], labels[~held], len(CLASSES))
        right += int(((features[held] @ head.weight.T + head.bias).argmax(-1) == labels[held]).sum())
    return right / features.shape[0]


def run_concepts(settings: BenchSettings, ev: Evaluator, cache_dir: Path, console: Console, *, per_class: int = 64, draws: int = 3) -> dict:
    """Every entry's test accuracy, cross-validated head accuracy and seconds; the choice."""
    start = time.perf_counter()
    train_rows = 2000
    test_rows = 3000 if not settings.test_rows or settings.test_rows >= 500 else settings.test_rows  # the full run: 3,000
    downstream, concepts = concept_tasks(train_rows, test_rows, settings.seed)
    carved = [CarvedTask(t, ()) for t in (downstream, *concepts)]
    folders = ensure_adapters(carved, settings, cache_dir, console)
    modules = [read_lora_adapter(folders[t.name], name=t.name) for t in concepts]
    heads = [load_head(folders[t.name]) for t in concepts]
    draw_rows = head_draws(downstream.train, per_class, draws, settings.seed)
    splits = [ev.split({"head": rows}, 128) for rows in draw_rows]
    test = ev.split({"test": downstream.test}, 256)

    def score(extract: Callable[[Split], Tensor]) -> dict:
        started = time.perf_counter()
        test_features, accs, cvs = extract(test), [], []
        for split in splits:
            f = extract(split)
            head = fit_probe(f, split.labels, len(CLASSES))
            accs.append(float(((test_features @ head.weight.T + head.bias).argmax(-1) == test.labels).float().mean()))
            cvs.append(cv_accuracy(f, split.labels, per_class))
        return {
            "acc": sum(accs) / draws,
            "acc_per_draw": accs,
            "cv_acc": sum(cvs) / draws,
            "seconds": round(time.perf_counter() - started, 1),
        }

    def merged(module: Module | None) -> Callable[[Split], Tensor]:
        def extract(split: Split) -> Tensor:
            ev.apply({k: d.dense().float() for k, d in module.layers.items()} if module is not None else None)
            return ev.features(split)

        return extract

    entries: dict[str, dict] = {}
    ev.apply({k: d.dense().float() for k, d in read_lora_adapter(folders["footwear"]).layers.items()})
    reference = ev.accuracies(test, {"test": load_head(folders["footwear"])})["test"]
    entries["frozen (floor)"] = score(merged(None))
    for name, (method, params) in MERGES.items():
        entries[name] = score(merged(merge(modules, method, seed=settings.seed, **params)))
        console.print(f"concepts {name}: test {100 * entries[name]['acc']:.1f}%, cv {100 * entries[name]['cv_acc']:.1f}%")
    library = Library()
    for module in modules:
        library.add(module)
    for name, router in (
        ("routed spectral", SpectralRouter()),  # the registered defaults: eigenmix route's
        ("routed uniform", UniformRouter()),
    ):
        entries[name] = score(_routed(ev, library, router))
    entries["concept heads (0 labels)"] = _zero_label(ev, modules, heads, test)
    chosen = max((n for n in entries if "cv_acc" in entries[n] and n != "frozen (floor)"), key=lambda n: entries[n]["cv_acc"])
    return {
        "downstream": list(CLASSES),
        "reference": {"downstream_lora": reference},
        "entries": entries,
        "chosen": chosen,
        "chosen_gap_points": round(100 * (entries[chosen]["acc"] - reference), 2),
        "target_met": entries[chosen]["acc"] >= reference - 0.02,
        "head_rows": {"per_class": per_class, "draws": draws},
        "rows": {"train": train_rows, "test": len(downstream.test)},
        "seconds": round(time.perf_counter() - start, 1),
    }


def _routed(ev: Evaluator, library: Library, router: Router) -> Callable[[Split], Tensor]:
    def extract(split: Split) -> Tensor:
        ev.apply(None)
        model = RoutedModel(ev.encoder, library, router)
        try:
            with torch.no_grad():
                pooled = [ev.inputs.pool(model(**batch), batch) for batch in split.batches]
        finally:
            model.detach_hooks()
        return torch.cat(pooled)

    return extract


def _zero_label(ev: Evaluator, modules: list[Module], heads: list, test: Split) -> dict:
    """Each concept adapter with its own binary head; the class with the largest margin."""
    started = time.perf_counter()
    margins = []
    for module, head in zip(modules, heads, strict=True):
        ev.apply({k: d.dense().float() for k, d in module.layers.items()})
        logits = ev.features(test) @ head.weight.T + head.bias
        margins.append(logits[:, 1] - logits[:, 0])
    acc = float((torch.stack(margins, 1).argmax(-1) == test.labels).float().mean())
    return {"acc": acc, "labels": 0, "seconds": round(time.perf_counter() - started, 1)}


def markdown(results: dict) -> str:
    """The concept table: test accuracy, cross-validated head accuracy, gap to the reference."""
    ref = results["reference"]["downstream_lora"]
    lines = [
        f"downstream: {' / '.join(results['downstream'])}; reference (LoRA trained on it): {100 * ref:.1f}%; "
        f"heads on {results['head_rows']['per_class']} labelled images a class ({results['head_rows']['draws']} draws)",
        "",
        "| entry | test acc. | 4-fold CV acc. (head rows) | gap to the reference (points) |",
        "|---|---:|---:|---:|",
    ]
    for name, e in results["entries"].items():
        cv = f"{100 * e['cv_acc']:.1f}" if "cv_acc" in e else ""
        mark = f"**{name}** (chosen)" if name == results["chosen"] else name
        lines.append(f"| {mark} | {100 * e['acc']:.1f} | {cv} | {100 * (e['acc'] - ref):+.1f} |")
    met = "met" if results["target_met"] else "missed"
    lines += [
        "",
        f"target (the chosen composition within 2 points of the reference): {met}, {results['chosen_gap_points']:+.2f} points",
        "",
    ]
    return "\n".join(lines)
