"""The ``eigenmix tune`` YAML config, validated by pydantic before any work starts.

Example::

    modules:                 # adapters made by eigenmix.train (head.safetensors, head.json)
      - {path: adapters/sst2}
      - {path: adapters/trec}
    base_model: sentence-transformers/all-MiniLM-L6-v2   # or a local encoder folder
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
The base encoder is ``base_model``, or else the one the adapters record.

Image modules (conv LoRAs of ``efficientnet-lite0``, ``eigenmix.vision.train``) take their
task's labelled images from each module's ``data``: a folder of PNGs with ``labels.csv``
(``file,label``) or an IDX images file with its labels file beside; a label is a class name
of the module's ``head.json`` ``label_names``. The images are resized to the side the
adapter was trained at (``head.json`` ``size``)::

    modules:
      - {path: adapters/footwear, data: images/footwear}
      - {path: adapters/digits, data: images/digits}
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eigenmix.harness.backbones import is_vision
from eigenmix.harness.tuning import TuneSpec
from eigenmix.io.heads import HEAD_FILE, HEAD_META, head_meta
from eigenmix.io.peft_config import CONFIG_NAME
from eigenmix.io.yaml_config import read_yaml_config
from eigenmix.train.encoder import encoder_path


class TuneModule(BaseModel):
    """One module and the task its head was trained on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(description="a PEFT LoRA adapter folder with head.safetensors and head.json (eigenmix.train)")
    task: str | None = Field(None, description="the task folder under data_dir (default: head.json's task)")
    data: Path | None = Field(
        None, description="image modules: the task's labelled images, a PNG folder with labels.csv or an IDX images file (labels beside)"
    )

    @field_validator("path")
    @classmethod
    def _adapter_with_head(cls, value: Path) -> Path:
        value = value.expanduser()
        missing = [name for name in (CONFIG_NAME, HEAD_FILE, HEAD_META) if not (value / name).is_file()]
        if missing:
            raise ValueError(f"{value} has no {' or '.join(missing)}")
        return value

    @property
    def task_name(self) -> str:
        return self.task or str(head_meta(self.path).get("task"))


class TuneOutput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int | None = Field(None, ge=1, description="truncate each layer of the written adapter to this rank; default: exact")


class TuneConfig(BaseModel):
    """A whole tuning job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    modules: list[TuneModule] = Field(min_length=1, description="the modules to compose, one per task")
    base_model: str | None = Field(
        None, description="the base encoder: a local transformers folder or sentence-transformers/all-MiniLM-L6-v2 (default: the adapters')"
    )
    data_dir: Path | None = Field(None, description="a folder of tasks in the bundled JSONL format (default: bundled)")
    tune: TuneSpec = Field(default_factory=TuneSpec, description="what is learned, from where, from how many rows")
    val_rows: int = Field(48, ge=1, description="validation rows per task, carved from train (early stopping)")
    output: TuneOutput = Field(default_factory=TuneOutput)
    seed: int = Field(0, description="seeds the rows drawn, the validation carve and the optimiser")

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        tasks = [m.task_name for m in self.modules]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"one module per task (got tasks {tasks})")
        if self.base_model is not None and not is_vision(self.base_model):
            encoder_path(self.base_model)
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise ValueError(f"data_dir: {self.data_dir} is not a folder")
        if self.tune.flatten > 0 and self.tune.level != "lambda+mu":
            raise ValueError("tune.flatten > 0 sets μ: use tune.level 'lambda+mu'")
        if self.tune.search == "cma" and (self.tune.granularity != "module" or len(self.modules) < 2):
            raise ValueError("tune.search 'cma' needs tune.granularity 'module' and 2+ modules")
        return self

    def inputs(self) -> list[Path]:
        """Every path the run reads."""
        data = [m.data for m in self.modules if m.data is not None]
        return [m.path for m in self.modules] + data + ([self.data_dir] if self.data_dir is not None else [])


def load_tune_config(path: Path | str) -> TuneConfig:
    """Read and validate a tune config; every problem is one :class:`InvalidInputError` line.
    A relative ``base_model`` that names a folder beside the config is resolved like the other paths."""
    path = Path(path)
    config = read_yaml_config(path, TuneConfig, ("data_dir",))
    base = config.base_model
    if base is not None and not Path(base).is_absolute() and (path.parent / base).is_dir():
        config = config.model_copy(update={"base_model": str(path.parent / base)})
    return config


__all__ = ["TuneConfig", "TuneModule", "TuneOutput", "load_tune_config"]
