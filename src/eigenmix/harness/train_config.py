"""The ``eigenmix train`` YAML config, validated by pydantic before any work starts.

Example::

    task: trec                  # a task folder under data_dir (default: the bundled tasks)
    kind: orthogonal            # lora, pissa, svf, spectral_adapter or orthogonal
    params: {r: 8, alpha: 16}   # the kind's parameters (eigenmix train --kinds lists them)
    library:                    # orthogonal: the modules to stay orthogonal to (PEFT LoRA folders)
      - adapters/sst2
      - adapters/cola
    recipe: {steps: 30, batch_size: 16, lr: 0.001}
    seed: 0

Relative paths are resolved against the config file's folder. The base model is the
bundled all-MiniLM-L6-v2 (a local transformers encoder folder with ``base_model``).

An image module (a conv module on EfficientNet-Lite0) names its labelled images instead of a
data folder — a folder of PNGs with ``labels.csv`` or an IDX images file — and its recipe is
``eigenmix.vision``'s (``size``, ``batch_size``, ``steps``, …; ``r`` and ``alpha`` there are
PEFT LoRA's, the kind's own go in ``params``); the classes are the labels, sorted::

    task: footwear
    images: images/footwear
    kind: svf
    recipe: {steps: 200, size: 64}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eigenmix.errors import did_you_mean
from eigenmix.io.peft_config import CONFIG_NAME
from eigenmix.io.yaml_config import read_yaml_config
from eigenmix.kinds import get_kind
from eigenmix.train.module import ModuleRecipe
from eigenmix.train.recipe import TrainRecipe
from eigenmix.vision.train import ImageLoraRecipe


class TrainConfig(BaseModel):
    """One module to train."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field(description="the task: a folder under data_dir in the bundled JSONL format")
    kind: str = Field("lora", description="the training kind (eigenmix.kinds)")
    params: dict[str, Any] = Field(default_factory=dict, description="the kind's parameters")
    library: list[Path] = Field(default_factory=list, description="orthogonal: PEFT LoRA adapter folders to stay orthogonal to")
    data_dir: Path | None = Field(None, description="a folder of tasks in the bundled JSONL format (default: bundled)")
    base_model: Path | None = Field(None, description="a local transformers encoder folder (default: the bundled all-MiniLM-L6-v2)")
    images: Path | None = Field(None, description="an image module: its labelled images (a PNG folder with labels.csv, an IDX file)")
    recipe: dict[str, Any] = Field(
        default_factory=dict, description="layers and schedule: a text TrainRecipe's fields, or for images ImageLoraRecipe's (size, …)"
    )

    @field_validator("library")
    @classmethod
    def _adapters(cls, value: list[Path]) -> list[Path]:
        for path in value:
            if not (path / CONFIG_NAME).is_file():
                raise ValueError(f"{path} is not a PEFT adapter folder (no {CONFIG_NAME})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        kind = get_kind(self.kind)
        kind.parse_params(self.params)
        if kind.needs_library and not self.library:
            raise ValueError(f"kind '{self.kind}' trains against a library: give library: [adapter folders]")
        if self.library and not kind.needs_library:
            raise ValueError(f"library: only the kinds that train against one use it ('{self.kind}' does not)")
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise ValueError(f"data_dir: {self.data_dir} is not a folder")
        if self.images is not None and not self.images.exists():
            raise ValueError(f"images: no such file or folder {self.images}")
        if self.images is not None and self.data_dir is not None:
            raise ValueError("give images (an image module) or data_dir (text tasks), not both")
        model: type[BaseModel] = ImageLoraRecipe if self.images is not None else TrainRecipe
        try:
            model.model_validate(self.recipe)
        except ValidationError as err:
            problems = []
            for e in err.errors():
                where = ".".join(map(str, e["loc"]))
                hint = did_you_mean(where, model.model_fields) if e["type"] == "extra_forbidden" else ""
                problems.append(f"recipe.{where}: {e['msg']}{hint}")
            raise ValueError("; ".join(problems)) from None
        return self

    def text_recipe(self) -> TrainRecipe:
        return TrainRecipe.model_validate(self.recipe)

    def image_recipe(self) -> ImageLoraRecipe:
        return ImageLoraRecipe.model_validate(self.recipe)

    def module_recipe(self) -> ModuleRecipe:
        return ModuleRecipe(**self.text_recipe().model_dump(), kind=self.kind, params=self.params)

    def inputs(self) -> list[Path]:
        """Every path the run reads."""
        return [*self.library, *(p for p in (self.data_dir, self.base_model, self.images) if p is not None)]


def _resolve_library(raw: dict[str, Any], root: Path) -> dict[str, Any]:
    library = raw.get("library")
    if isinstance(library, list):
        raw = {**raw, "library": [str(root / Path(p).expanduser()) if isinstance(p, str) else p for p in library]}
    return raw


def load_train_config(path: Path | str) -> TrainConfig:
    """Read and validate a train config; every problem is one :class:`InvalidInputError` line."""
    return read_yaml_config(path, TrainConfig, ("data_dir", "base_model", "images"), translate=_resolve_library)


__all__ = ["TrainConfig", "load_train_config"]
