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
and its task vector ``W_ft − W_base`` is merged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eigenmix.errors import InvalidInputError
from eigenmix.merge.registry import get_method

M = TypeVar("M", bound=BaseModel)


class ModuleEntry(BaseModel):
    """One input module."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(description="a PEFT LoRA adapter folder, or a fine-tuned checkpoint (file or folder)")
    weight: float = Field(1.0, description="this module's weight in the merge")
    name: str | None = Field(None, description="a short name (default: the folder's name)")

    @property
    def is_adapter(self) -> bool:
        return (self.path / "adapter_config.json").is_file()


class OutputEntry(BaseModel):
    """What to write."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["adapter", "full"] = Field("adapter", description="a PEFT LoRA adapter, or a full model (base + merged delta)")
    rank: int | None = Field(None, ge=1, description="truncate each layer to this rank (adapter only); default: exact rank")


class MergeConfig(BaseModel):
    """A whole merge job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = Field(description="a registered merge method (see `eigenmix methods`)")
    parameters: dict[str, Any] = Field(default_factory=dict, description="the method's parameters")
    modules: list[ModuleEntry] = Field(min_length=1, description="the modules to merge")
    base_model: Path | None = Field(None, description="the base checkpoint: needed for full-model output and fine-tunes")
    output: OutputEntry = Field(default_factory=OutputEntry)
    seed: int = Field(0, description="seed of the random methods (per layer)")
    dense_rank: int | None = Field(None, ge=1, description="randomized-SVD rank for dense task vectors (exact SVD when unset)")
    dense_energy: float = Field(1.0, gt=0, le=1, description="share of each dense delta's energy kept by spectral methods")
    extras: Literal["per_task", "refuse"] = Field("per_task", description="keep each module's heads per task, or refuse them")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        get_method(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MergeConfig:
        get_method(self.method).parse_params(self.parameters)
        for i, entry in enumerate(self.modules):
            if not entry.path.exists():
                raise ValueError(f"modules.{i}.path: {entry.path} does not exist")
            if not entry.is_adapter and self.base_model is None:
                raise ValueError(f"modules.{i}.path: {entry.path} is not a PEFT adapter folder, so it needs 'base_model'")
        if self.base_model is not None and not self.base_model.exists():
            raise ValueError(f"base_model: {self.base_model} does not exist")
        if self.output.kind == "full" and self.base_model is None:
            raise ValueError("output.kind 'full' needs 'base_model'")
        if self.output.kind == "full" and self.output.rank is not None:
            raise ValueError("output.rank applies to adapters only")
        names = [e.name or e.path.name for e in self.modules]
        if len(set(names)) != len(names):
            raise ValueError(f"module names must differ (got {names}); set 'name' for each")
        return self


def resolve_paths(raw: dict[str, Any], root: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """Make relative paths relative to the config file's folder: every ``modules[i].path``
    and the top-level ``keys``."""
    out = dict(raw)
    if isinstance(out.get("modules"), list):
        out["modules"] = [
            {**m, "path": str(root / m["path"])} if isinstance(m, dict) and isinstance(m.get("path"), str) else m for m in out["modules"]
        ]
    for key in keys:
        if isinstance(out.get(key), str):
            out[key] = str(root / out[key])
    return out


def parse_yaml_config(path: Path, model: type[M], path_keys: tuple[str, ...] = ()) -> M:
    """Read a YAML mapping, resolve its relative paths (:func:`resolve_paths`), validate it
    as ``model``; every problem is one :class:`InvalidInputError` line naming the file and the key."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InvalidInputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{path}: must be a YAML mapping")
    try:
        return model.model_validate(resolve_paths(raw, path.parent, path_keys))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        raise InvalidInputError(f"{path}: {where + ': ' if where else ''}{msg}") from None
    except InvalidInputError as err:
        raise InvalidInputError(f"{path}: {err}") from None


def load_config(path: Path | str) -> MergeConfig:
    """Read and validate a merge config; every problem is one :class:`InvalidInputError` line."""
    return parse_yaml_config(Path(path), MergeConfig, ("base_model",))
