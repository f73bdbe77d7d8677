"""Run a validated tune config: load, learn the coefficients, write everything atomically.

The output folder holds the tuned composition as a PEFT LoRA adapter
(``adapter_config.json``, ``adapter_model.safetensors``), each task's head under
``heads/<task>.safetensors`` (with ``heads/heads.json``), the coefficients
(``coefficients.safetensors``, ``coefficients.json``) and ``tune_report.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors.torch import load_file

from eigenmix.bench.evaluator import Evaluator, Head
from eigenmix.bench.splits import carve
from eigenmix.data import load_tasks
from eigenmix.io import read_lora_adapter
from eigenmix.io.atomic import atomic_dir, check_destination
from eigenmix.io.peft_lora import write_lora_files
from eigenmix.merge import check_compatible
from eigenmix.modules import Module
from eigenmix.tune.config import TuneConfig
from eigenmix.tune.export import export_module, save_coefficients
from eigenmix.tune.fit import TuneResult
from eigenmix.tune.text import tune_text


@dataclass(frozen=True)
class TuneRun:
    out: Path
    result: TuneResult
    module: Module


def run_tune(config: TuneConfig, out: Path, *, overwrite: bool = False, on_step: Callable[[int, float], None] | None = None) -> TuneRun:
    """Tune as ``config`` says and write the result to ``out`` atomically."""
    check_destination(out, overwrite=overwrite)
    start = time.perf_counter()
    names = [m.task_name for m in config.modules]
    tasks = [carve(t, config.val_rows, 0, config.seed) for t in load_tasks(config.data_dir, names=names)]
    modules = [read_lora_adapter(m.path, name=task) for m, task in zip(config.modules, names, strict=True)]
    check_compatible(modules)
    heads = {}
    for entry, task in zip(config.modules, names, strict=True):
        tensors = load_file(str(entry.path / "head.safetensors"))
        heads[task] = Head(tensors["weight"], tensors["bias"])
    max_length = int(config.modules[0].head_meta().get("recipe", {}).get("max_length", 64))
    ev = Evaluator(max_length)
    comp, result = tune_text(config.tune, modules, tasks, heads, ev, config.seed, on_step=on_step)
    try:
        module = export_module(comp, name="tuned", base_model=modules[0].base_model)
        if config.output.rank is not None:
            module = Module(
                module.name,
                {k: d.truncate(config.output.rank) for k, d in module.layers.items()},
                module.base_model,
            )
        with atomic_dir(out, overwrite=overwrite) as tmp:
            write_lora_files(module, tmp)
            (tmp / "heads").mkdir()
            for entry, task in zip(config.modules, names, strict=True):
                shutil.copyfile(entry.path / "head.safetensors", tmp / "heads" / f"{task}.safetensors")
            (tmp / "heads" / "heads.json").write_text(
                json.dumps({t: m.head_meta() for t, m in zip(names, config.modules, strict=True)}, indent=2) + "\n"
            )
            save_coefficients(comp, tmp, extra={"tune": config.tune.model_dump(mode="json")})
            report = {"config": config.model_dump(mode="json"), "result": asdict(result), "seconds": round(time.perf_counter() - start, 2)}
            (tmp / "tune_report.json").write_text(json.dumps(report, indent=2) + "\n")
    finally:
        comp.detach_hooks()
    return TuneRun(out, result, module)
