"""The ``eigenmix tune`` YAML config, validated by pydantic before any work starts.

Example::

    modules:                 # adapters made by eigenmix.train (head.safetensors, head.json)
      - {path: adapters/sst2}
      - {path: adapters/trec}
    data_dir: null           # task folders in the bundled format (default: the bundled tasks)
    tune:
      init: spectral
      scale: 1.0
      rows: 64
      settings: {objective: sup, steps: 60}
    val_rows: 48
    output: {rank: null}
    seed: 0

Relative paths are resolved against the config file's folder. Each module's task is its
``head.json``'s ``task`` unless ``task`` is given; the task's rows come from ``data_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eigenmix.merge.config import parse_yaml_config
from eigenmix.tune.text import TuneSpec


class TuneModule(BaseModel):
    """One module and the task its head was trained on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(description="a PEFT LoRA adapter folder with head.safetensors and head.json (eigenmix.train)")
    task: str | None = Field(None, description="the task folder under data_dir (default: head.json's task)")

    def head_meta(self) -> dict[str, Any]:
        return json.loads((self.path / "head.json").read_text())

    @property
    def task_name(self) -> str:
        return self.task or str(self.head_meta()["task"])


class TuneOutput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int | None = Field(None, ge=1, description="truncate each layer of the written adapter to this rank; default: exact")


class TuneConfig(BaseModel):
    """A whole tuning job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    modules: list[TuneModule] = Field(min_length=1, description="the modules to compose, one per task")
    data_dir: Path | None = Field(None, description="a folder of tasks in the bundled JSONL format (default: bundled)")
    tune: TuneSpec = Field(default_factory=TuneSpec, description="what is learned, from where, from how many rows")
    val_rows: int = Field(48, ge=1, description="validation rows per task, carved from train (early stopping)")
    output: TuneOutput = Field(default_factory=TuneOutput)
    seed: int = Field(0, description="seeds the rows drawn, the validation carve and the optimiser")

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        for i, entry in enumerate(self.modules):
            for name in ("adapter_config.json", "head.safetensors", "head.json"):
                if not (entry.path / name).is_file():
                    raise ValueError(f"modules.{i}.path: {entry.path} has no {name}")
        tasks = [m.task_name for m in self.modules]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"one module per task (got tasks {tasks})")
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise ValueError(f"data_dir: {self.data_dir} is not a folder")
        if self.tune.flatten > 0 and self.tune.level != "lambda+mu":
            raise ValueError("tune.flatten > 0 sets μ: use tune.level 'lambda+mu'")
        if self.tune.search == "cma" and (self.tune.granularity != "module" or len(self.modules) < 2):
            raise ValueError("tune.search 'cma' needs tune.granularity 'module' and 2+ modules")
        return self


def load_tune_config(path: Path | str) -> TuneConfig:
    """Read and validate a tune config; every problem is one :class:`InvalidInputError` line."""
    return parse_yaml_config(Path(path), TuneConfig, ("data_dir",))


__all__ = ["TuneConfig", "TuneModule", "TuneOutput", "load_tune_config"]
