"""Run a validated tune config: load, learn the coefficients, write everything atomically.

The output folder holds the tuned composition as a PEFT LoRA adapter
(``adapter_config.json``, ``adapter_model.safetensors``), each task's head under
``heads/<task>.safetensors`` (with ``heads/heads.json``), the coefficients
(``coefficients.safetensors``, ``coefficients.json``) and ``tune_report.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from eigenmix.data import Task, load_tasks
from eigenmix.data.images import ImageExample, read_image_inputs
from eigenmix.errors import InvalidInputError
from eigenmix.harness.backbones import IMAGE_SIZE, is_vision, load_backbone
from eigenmix.harness.evaluator import Evaluator, Head, load_head
from eigenmix.harness.splits import CarvedTask, carve
from eigenmix.harness.tune_config import TuneConfig, TuneModule
from eigenmix.harness.tuning import tune_tasks
from eigenmix.io import read_lora_adapter
from eigenmix.io.atomic import Destination, atomic_dir
from eigenmix.io.heads import head_meta, write_heads
from eigenmix.io.peft_lora import adapter_digest, write_lora_files
from eigenmix.merging import check_compatible
from eigenmix.modules import Module
from eigenmix.train.encoder import MINILM_ID, encoder_path
from eigenmix.tune import TuneResult, export_module, save_coefficients

REPORT = "tune_report.json"  # every tune output holds it: what --force may replace


@dataclass(frozen=True)
class TuneRun:
    out: Path
    result: TuneResult
    module: Module


@dataclass(frozen=True)
class TuneInputs:
    """Everything a tuning run reads, loaded and checked before the encoder is loaded."""

    tasks: list[CarvedTask]
    modules: list[Module]
    heads: dict[str, Head]
    max_length: int
    base: str
    image_size: int | None = None  # image modules: the side they were trained at


def prepare_tune(config: TuneConfig) -> TuneInputs:
    """Read the tasks, modules and heads and check that they fit: the dry run stops here."""
    names = [m.task_name for m in config.modules]
    modules = [read_lora_adapter(m.path, name=task) for m, task in zip(config.modules, names, strict=True)]
    check_compatible(modules)
    base = config.base_model or modules[0].base_model or MINILM_ID
    size = None
    if is_vision(base):
        metas = [head_meta(m.path) for m in config.modules]
        sizes = {int(meta.get("size", IMAGE_SIZE)) for meta in metas}
        if len(sizes) > 1:
            raise InvalidInputError(f"the image modules were trained at different sizes {sorted(sizes)}; tune modules of one size")
        size = sizes.pop()
        rows = [image_task(m, n, meta) for m, n, meta in zip(config.modules, names, metas, strict=True)]
    else:
        encoder_path(base)
        rows = load_tasks(config.data_dir, names=names)
    tasks = [carve(t, config.val_rows, 0, config.seed) for t in rows]
    heads = {task: load_head(entry.path) for entry, task in zip(config.modules, names, strict=True)}
    for entry, task in zip(config.modules, tasks, strict=True):
        classes = heads[task.name].weight.shape[0]
        if classes != task.task.num_labels:
            raise InvalidInputError(f"{entry.path}: its head has {classes} classes but task '{task.name}' has {task.task.num_labels}")
    max_length = int(head_meta(config.modules[0].path).get("recipe", {}).get("max_length", 64))
    return TuneInputs(tasks, modules, heads, max_length, base, size)


def image_task(module: TuneModule, name: str, meta: dict) -> Task:
    """A module's labelled images (its ``data``) as a task; labels are its head's class names."""
    if module.data is None:
        raise InvalidInputError(f"{module.path}: an image module needs 'data': its task's labelled images (a PNG folder, an IDX file)")
    classes = [str(c) for c in meta.get("label_names", [])]
    rows = read_image_inputs(module.data)
    unlabeled = [r.line for r in rows if r.group is None]
    if unlabeled:
        raise InvalidInputError(f"{module.data}: image {unlabeled[0]} has no label (tuning reads labelled images)")
    unknown = sorted({str(r.group) for r in rows} - set(classes))
    if unknown:
        raise InvalidInputError(f"{module.data}: label '{unknown[0]}' is not a class of {module.path}'s head ({', '.join(classes)})")
    return Task(name, tuple(ImageExample(r.image, classes.index(str(r.group))) for r in rows), (), tuple(classes))


def run_tune(
    config: TuneConfig, dest: Destination, *, inputs: TuneInputs | None = None, on_step: Callable[[int, float], None] | None = None
) -> TuneRun:
    """Tune as ``config`` says and write the result to ``dest`` atomically."""
    start = time.perf_counter()
    inputs = inputs if inputs is not None else prepare_tune(config)
    names, modules = [t.name for t in inputs.tasks], inputs.modules
    if inputs.image_size is not None:
        ev = Evaluator(backbone=load_backbone(inputs.base, image_size=inputs.image_size))
    else:
        ev = Evaluator(inputs.max_length, encoder=inputs.base)
    comp, result = tune_tasks(config.tune, modules, inputs.tasks, inputs.heads, ev, config.seed, on_step=on_step)
    try:
        module = export_module(comp, name="tuned", base_model=modules[0].base_model)
        if config.output.rank is not None:
            module = replace(module, layers={k: d.spectral().truncate(config.output.rank) for k, d in module.layers.items()})
        with atomic_dir(dest) as tmp:
            write_lora_files(module, tmp)
            write_heads({task: entry.path for entry, task in zip(config.modules, names, strict=True)}, tmp)
            save_coefficients(comp, tmp, extra={"tune": config.tune.model_dump(mode="json")})
            digests = {task: adapter_digest(entry.path) for entry, task in zip(config.modules, names, strict=True)}
            report = {"config": config.model_dump(mode="json"), "result": asdict(result), "seconds": round(time.perf_counter() - start, 2),
                      "module_digests": digests}  # fmt: skip
            (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        comp.detach_hooks()
    return TuneRun(dest.path, result, module)
