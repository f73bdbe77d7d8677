"""The ``eigenmix merge`` YAML config, validated by pydantic before any work starts.

Example::

    method: ties
    parameters: {density: 0.2}
    modules:
      - {path: adapters/sst2, weight: 1.0}
      - {path: adapters/ag_news, weight: 1.0}
    output: {kind: adapter, rank: 64}
    seed: 0

Relative paths are resolved against the config file's folder. A module path is a PEFT
LoRA adapter folder, or a full fine-tuned checkpoint (then ``base_model`` is required
and its task vector ``W_ft − W_base`` is merged). The method's parameters are validated
here, once, into the method's own parameter model; :meth:`MergeConfig.plan` hands them on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, Strict, ValidationInfo, field_validator, model_validator

from eigenmix.errors import InvalidInputError
from eigenmix.io.full_model import parse_shard_size
from eigenmix.io.yaml_config import read_yaml_config
from eigenmix.merging.mergekit_config import from_mergekit
from eigenmix.merging.plan import MergePlan, check_weights, make_plan
from eigenmix.merging.registry import MergeParams, get_method


def check_label(name: str) -> str:
    """A module name names files of the output (``heads/<name>.safetensors``): no path
    separators, no leading dot."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or len(name) > 200:
        raise ValueError(f"module name '{name}' must be a plain file name (no '/', no leading '.')")
    return name


class ModuleEntry(BaseModel):
    """One input module."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    path: Path = Field(description="a PEFT LoRA adapter folder, or a fine-tuned checkpoint (file or folder)")
    weight: Annotated[float, Strict()] = Field(1.0, description="this module's weight in the merge (finite)")
    name: str | None = Field(None, description="a short name (default: the folder's name)")

    @field_validator("path")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.exists():
            raise ValueError(f"{value} does not exist")
        return value

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None:
            check_label(value)
        return value

    @property
    def is_adapter(self) -> bool:
        return (self.path / "adapter_config.json").is_file()

    @property
    def label(self) -> str:
        return self.name or self.path.name


class OutputEntry(BaseModel):
    """What to write."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["adapter", "full"] = Field("adapter", description="a PEFT LoRA adapter, or a full model (base + merged delta)")
    rank: int | None = Field(None, ge=1, description="truncate each layer to this rank (adapter only); default: exact rank")
    shard_size: int | str = Field(
        "5B", description="full only: parameters per safetensors shard, as mergekit's --out-shard-size (5B, 500M, or a number)"
    )
    dtype: Literal["base", "float32", "bfloat16", "float16"] = Field(
        "base",
        description="the dtype written; base: each base tensor's own (full), the input modules' own where they share one (adapter)",
    )

    @field_validator("shard_size")
    @classmethod
    def _shard_size(cls, value: int | str) -> int | str:
        try:
            parse_shard_size(value)
        except InvalidInputError as err:
            raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _full_only(self) -> OutputEntry:
        if self.kind == "adapter" and "shard_size" in self.model_fields_set:
            raise ValueError("output.shard_size applies to output.kind 'full' only")
        return self


class ExecutorEntry(BaseModel):
    """Who runs the per-layer work."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["local", "ray"] = Field("local", description="this process, or Ray tasks (the ray extra); the results are identical")
    address: str | None = Field(None, description="ray: 'auto' (this machine's cluster) or HOST:PORT; unset: start a local instance")
    workers: int = Field(2, ge=1, description="ray: CPUs of a local instance, and layers merged at once")


class CalibrationRows(BaseModel):
    """One module's unlabeled calibration rows (its task's inputs; labels are never read)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: Path = Field(
        description="the rows, as the base model takes them: a JSONL file of text rows; for an image model a folder of PNGs "
        "with labels.csv or an IDX images file"
    )
    rows: Annotated[int, Strict()] = Field(64, ge=1, description="how many rows to use: the first N of the file")
    text_field: str = Field("text", description="text rows: the field holding the text")
    pair_field: str = Field("text_pair", description="text rows: the field holding a sentence pair's second text, where there is one")

    @field_validator("file")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.exists():
            raise ValueError(f"{value} does not exist")
        if not (value.is_file() or value.is_dir()):
            raise ValueError(f"{value} is neither a regular file nor a folder")
        return value


class CalibrationSection(BaseModel):
    """Rows per module for the calibrated methods (regmean, regmean_pp, lot, spectral_ls, spectral_align)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    modules: dict[str, CalibrationRows] = Field(min_length=1, description="module name → its rows")
    max_length: Annotated[int, Strict()] = Field(128, ge=1, description="text: tokens per row (longer rows are truncated)")
    image_size: Annotated[int, Strict()] = Field(64, ge=32, description="images: the side they are resized to (a multiple of 32)")
    batch_size: Annotated[int, Strict()] = Field(16, ge=1, description="rows per forward pass")
    sketch_above: Annotated[int, Strict()] | None = Field(
        2048, ge=1, description="layers with more inputs keep their Grams in the modules' row space (R × R); null: never"
    )


class MergeConfig(BaseModel):
    """A whole merge job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = Field(description="a registered merge method (see `eigenmix methods`)")
    parameters: SerializeAsAny[MergeParams] = Field(default_factory=dict, validate_default=True, description="the method's parameters")
    modules: list[ModuleEntry] = Field(min_length=1, description="the modules to merge")
    base_model: Path | None = Field(None, description="the base checkpoint: needed for full-model output and fine-tunes")
    output: OutputEntry = Field(default_factory=OutputEntry)
    seed: int = Field(0, description="seed of the random methods (per layer)")
    dense_rank: int | None = Field(
        None, ge=1, description="randomized-SVD rank for dense task vectors (default: output.rank where given, else the exact SVD)"
    )
    dense_energy: float = Field(1.0, gt=0, le=1, description="share of each dense delta's energy kept by spectral methods")
    extras: Literal["per_task", "refuse"] = Field("per_task", description="keep each module's heads per task, or refuse them")
    executor: ExecutorEntry = Field(default_factory=ExecutorEntry)
    threads: int | None = Field(
        None, ge=1, description="threads for the large products (small dense algebra runs on one); default: the cores not already busy"
    )
    calibration: CalibrationSection | None = Field(
        None, description="unlabeled rows per module: the layer-input statistics of the calibrated methods"
    )
    continue_from: Path | None = Field(
        None,
        description="an earlier eigenmix merge (task_arithmetic, linear or opcm) to fold these modules into, from its merge_state.json",
    )

    @field_validator("continue_from")
    @classmethod
    def _earlier_merge(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        if not value.is_dir():
            raise ValueError(f"{value} is not a folder")
        if not (value / "merge_state.json").is_file():
            raise ValueError(
                f"{value} has no merge_state.json: only a task_arithmetic, linear or opcm merge that eigenmix wrote can be continued"
            )
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        get_method(value)
        return value

    @field_validator("parameters", mode="before")
    @classmethod
    def _method_parameters(cls, value: Any, info: ValidationInfo) -> MergeParams:
        if isinstance(value, MergeParams):
            return value
        if "method" not in info.data:  # the method's own error is reported
            return MergeParams()
        if value is not None and not isinstance(value, dict):
            raise ValueError("must be a mapping of the method's parameters")
        return get_method(info.data["method"]).parse_params(value)

    @field_validator("base_model")
    @classmethod
    def _base_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().exists():
            raise ValueError(f"{value} does not exist")
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> MergeConfig:
        problems = []
        for i, entry in enumerate(self.modules):
            if not entry.is_adapter and self.base_model is None:
                what = "a folder without adapter_config.json" if entry.path.is_dir() else "not a PEFT adapter folder"
                problems.append(f"modules.{i}.path: {entry.path} is {what}; a fine-tuned checkpoint needs 'base_model'")
        if self.output.kind == "full" and self.base_model is None:
            problems.append("output.kind 'full' needs 'base_model'")
        if self.continue_from is not None and get_method(self.method).continual is None:
            problems.append(f"method '{self.method}' cannot fold modules into an earlier merge (task_arithmetic, linear and opcm can)")
        if self.output.kind == "full" and self.output.rank is not None:
            problems.append("output.rank applies to adapters only")
        names = [e.label for e in self.modules]
        problems += self._calibration_problems(names)
        if len(set(names)) != len(names):
            problems.append(f"module names must differ (got {names}); set 'name' for each")
        for i, name in enumerate(names):
            try:
                check_label(name)
            except ValueError as err:
                problems.append(f"modules.{i}: {err}")
        try:
            check_weights([e.weight for e in self.modules], get_method(self.method), self.parameters)
        except InvalidInputError as err:
            problems.append(str(err))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _calibration_problems(self, names: list[str]) -> list[str]:
        needs = get_method(self.method).calibration
        if self.calibration is None:
            return [f"method '{self.method}' needs calibration rows: add a 'calibration:' section (rows per module)"] if needs else []
        if needs is None:
            return [f"method '{self.method}' uses no calibration rows; remove the 'calibration:' section"]
        problems = [f"calibration.modules.{n}: no module is named '{n}' (modules: {', '.join(names)})"
                    for n in self.calibration.modules if n not in names]  # fmt: skip
        problems += [f"calibration.modules: module '{n}' has no rows (every task's inputs enter the solve)"
                     for n in names if n not in self.calibration.modules]  # fmt: skip
        if any(not e.is_adapter for e in self.modules):
            problems.append("the calibrated methods merge LoRA adapters (hooked layers of the base model); a fine-tune is not one")
        return problems

    def plan(self, calibration: object = None) -> MergePlan:
        """The merge this config describes (already checked), with the calibration
        statistics a calibrated method runs on."""
        return make_plan(
            self.method, len(self.modules), weights=[e.weight for e in self.modules], params=self.parameters,
            seed=self.seed, dense_rank=self.dense_rank or self.output.rank, dense_energy=self.dense_energy, calibration=calibration,
        )  # fmt: skip

    def inputs(self) -> list[Path]:
        """Every path the merge reads."""
        extra = [p for p in (self.base_model, self.continue_from) if p is not None]
        rows = [c.file for c in self.calibration.modules.values()] if self.calibration is not None else []
        return [e.path for e in self.modules] + extra + rows


def load_config(path: Path | str) -> MergeConfig:
    """Read and validate a merge config; every problem is one :class:`InvalidInputError` line."""
    return read_yaml_config(Path(path), MergeConfig, ("base_model", "continue_from"), translate=from_mergekit)
