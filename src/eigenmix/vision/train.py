"""Concept modules on images: conv LoRA adapters trained on the frozen EfficientNet-Lite0.

On an :class:`~eigenmix.vision.tasks.ImageTask`, :func:`train_image_adapter` trains a PEFT LoRA (Hu et al. 2021,
https://arxiv.org/abs/2106.09685) on the backbone's 2-D convolutions that take one
(``groups == 1``) — by default the stem, every 1×1 expand / project conv and the head conv;
the depthwise convs have no single matrix delta — plus a linear head on the pooled
1280-d features, and saves both in the format of ``eigenmix.train``'s text adapters, so
reading, merging, libraries and routing take them as they are:

- ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's own ``save_pretrained``;
  ``base_model_name_or_path`` is the id ``efficientnet-lite0``, not a local path);
- ``head.safetensors`` (``weight (classes, 1280)``, ``bias (classes,)``) and ``head.json``
  (``task``, ``label_names``, ``recipe``, ``train_rows``, ``train_seconds``, ``final_loss``,
  ``modality: "image"``, ``size``: the image side the adapter was trained at).

The backbone stays in eval mode while training: batch norm keeps its ImageNet running
statistics (a LoRA that moved them would change every layer for every task, and adapters
of different tasks would disagree about the base they were trained on); PEFT leaves every
base parameter, batch norm's affine ones included, frozen. Only the LoRA factors and the
head learn.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from eigenmix.data.images import ImageSet
from eigenmix.errors import InvalidInputError
from eigenmix.io.atomic import Destination, atomic_dir, destination
from eigenmix.io.heads import HEAD_META, save_head
from eigenmix.modules import Module
from eigenmix.seeds import derived_seed
from eigenmix.vision.backbone import FEATURE_DIM, MODEL_NAME, features, inputs, load_efficientnet_lite0
from eigenmix.vision.tasks import ImageTask

# The stem, every 1×1 expand / project conv (blocks 0…15; block 0 has no expand) and the
# 1×1 head conv: the 33 convs of Lite0 with groups == 1. Matched with re.fullmatch, as PEFT does.
LITE0_CONVS = r"_conv_stem|_conv_head|_blocks\.\d+\.(_expand_conv|_project_conv)"
STRIDE = 32  # Lite0 halves the side five times; see ImageLoraRecipe.size
MODALITY = "image"


class ImageLoraRecipe(BaseModel):
    """One conv-LoRA training recipe on EfficientNet-Lite0, used for every image task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scale = alpha / r)")
    target_modules: str = Field(LITE0_CONVS, description="regex (full match) of the groups == 1 convs that get LoRA")
    steps: int = Field(100, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1, description="images per step")
    size: int = Field(64, ge=STRIDE, description="image side in pixels; a multiple of 32 (Lite0's padding was converted for even maps)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the LoRA factors")
    head_lr: float = Field(3e-3, gt=0, description="AdamW learning rate of the head")
    seed: int = Field(0, description="seed of initialisation and batch order (combined with the task name)")

    @field_validator("size")
    @classmethod
    def _multiple_of_stride(cls, value: int) -> int:
        # The stride-2 convs were made plain for TF "SAME" padding of an even input (one extra
        # row and column at the bottom / right); an odd map would be padded differently.
        if value % STRIDE:
            raise ValueError(f"size must be a multiple of {STRIDE} (Lite0's five stride-2 convs need even maps), got {value}")
        return value

    @field_validator("target_modules")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"target_modules is not a regex ({err})") from None
        return value


def lora_targets(model: nn.Module, pattern: str) -> list[str]:
    """The layers of ``model`` whose full name matches ``pattern`` (as PEFT matches a string),
    each an ``nn.Conv2d`` with ``groups == 1``.

    Raises:
        InvalidInputError: no layer matches, or one that matches is not such a conv.
    """
    names = [name for name, _ in model.named_modules() if name and re.fullmatch(pattern, name)]
    if not names:
        raise InvalidInputError(f"target_modules {pattern!r} matches no layer (e.g. _conv_stem, _blocks.1._expand_conv, _conv_head)")
    for name in names:
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Conv2d):
            raise InvalidInputError(f"target_modules {pattern!r} matches {name}, a {type(layer).__name__}; image LoRA targets convolutions")
        if layer.groups != 1:
            raise InvalidInputError(
                f"target_modules {pattern!r} matches {name}, a grouped (depthwise) conv; LoRA on it has no single matrix delta"
            )
    return names


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless epochs of shuffled index batches ``(min(batch_size, n),)`` of ``range(n)``.

    Every batch has the same size (an epoch's remainder is left out, a different one each
    epoch): a new input shape makes oneDNN plan every convolution again, which costs more
    than a step.
    """
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        yield from order[: n - n % size].split(size)


def _fit(
    model: nn.Module,
    head: nn.Linear,
    train: ImageSet,
    recipe: ImageLoraRecipe,
    seed: int,
    on_step: Callable[[int, float], None] | None,
    trainable: list[nn.Parameter] | None = None,
    lr_ratio: float = 1.0,
) -> tuple[float, float]:
    """AdamW on the LoRA factors (at ``recipe.lr × lr_ratio``) and the head for ``recipe.steps``
    random batches; the model stays in eval mode (batch norm's running statistics are not updated).

    Returns:
        ``(seconds, last loss)``.
    """
    lora = trainable if trainable is not None else [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": lora, "lr": recipe.lr * lr_ratio}, {"params": list(head.parameters()), "lr": recipe.head_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    pixels = inputs(recipe.size).pixels
    order = _batches(len(train), recipe.batch_size, torch.Generator().manual_seed(seed))
    model.eval()
    start, loss_value = time.perf_counter(), float("nan")
    for step in range(recipe.steps):
        index = next(order)
        logits = head(features(model, pixels(train.images[index])))  # (batch, classes)
        loss = F.cross_entropy(logits, train.labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_value)
    return time.perf_counter() - start, loss_value


def train_image_adapter(
    task: ImageTask,
    recipe: ImageLoraRecipe,
    out: Path | str,
    *,
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train a conv LoRA adapter and a linear head on ``task.train``; save both atomically to
    ``out`` (the format: see the module docstring).

    Args:
        task: the task; its name and ``recipe.seed`` give the seed (``derived_seed``).
        recipe: the recipe.
        out: the adapter folder; an existing one only with ``overwrite`` and only if it is an
            earlier adapter (it holds ``head.json``). Checked before training.
        on_step: called with ``(step, loss)`` after each step.

    Returns:
        ``{"train_seconds": …, "final_loss": …}``.

    Raises:
        InvalidInputError: targets that match no conv or a grouped one; an unusable ``out``.
    """
    from peft import LoraConfig, get_peft_model

    dest = destination(out, overwrite=overwrite, marker=HEAD_META)
    # A per-task seed: one seed for all tasks would start every adapter from the same lora_A.
    seed = derived_seed(recipe.seed, task.name)
    with torch.random.fork_rng(devices=[]):  # PEFT draws lora_A from the global generator; the caller's is left as it was
        torch.manual_seed(seed)
        base = load_efficientnet_lite0()
        lora_targets(base, recipe.target_modules)
        config = LoraConfig(r=recipe.r, lora_alpha=recipe.alpha, target_modules=recipe.target_modules, lora_dropout=0.0)  # type: ignore[arg-type]  # PEFT annotates an int; any number works
        model = get_peft_model(base, config)
        head = nn.Linear(FEATURE_DIM, task.num_labels)
    seconds, loss_value = _fit(model, head, task.train, recipe, seed, on_step)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(str(tmp))
        _pin_base_model(tmp / "adapter_config.json")
        save_head(tmp, head, task.name, task.label_names, recipe.model_dump(), len(task.train), seconds, loss_value, **_image_meta(recipe))
    return {"train_seconds": seconds, "final_loss": loss_value}


def train_image_module(
    task: ImageTask,
    recipe: ImageLoraRecipe,
    out: Destination | Path | str,
    *,
    kind: str,
    params: dict[str, Any] | None = None,
    library: Sequence[Module] = (),
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train a module of a training kind (:mod:`eigenmix.kinds`) on the frozen backbone's
    convs (``recipe.target_modules``) and a linear head, as :func:`train_image_adapter` does
    with PEFT LoRA; saved in the same format (a PEFT conv LoRA of the kind's rank). The kind's
    parameters are ``params`` (``recipe.r`` and ``recipe.alpha`` are PEFT LoRA's); the
    ``orthogonal`` kind stays orthogonal to ``library``'s modules.

    Returns:
        ``{"train_seconds": …, "final_loss": …, "trained_parameters": …}``.
    """
    from eigenmix.io.peft_lora import write_lora_files
    from eigenmix.kinds import attach, get_kind, library_bases

    dest = out if isinstance(out, Destination) else destination(out, overwrite=overwrite, marker=HEAD_META)
    chosen = get_kind(kind)
    settings = chosen.parse_params(params)
    seed = derived_seed(recipe.seed, task.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = load_efficientnet_lite0().requires_grad_(False)
        names = lora_targets(base, recipe.target_modules)
        bases = library_bases(library) if chosen.needs_library else None
        trainable = attach(base, chosen, settings, names, seed=seed, library=bases)
        head = nn.Linear(FEATURE_DIM, task.num_labels)
    seconds, loss_value = _fit(base, head, task.train, recipe, seed, on_step, trainable.parameters(), settings.lr_ratio)
    module = trainable.module(task.name, base_model=MODEL_NAME)
    trainable.remove()
    count = sum(p.numel() for p in trainable.parameters())
    with atomic_dir(dest) as tmp:
        write_lora_files(module, tmp)
        extra = {"kind": kind, "params": settings.model_dump(), "trained_parameters": count}
        described = recipe.model_dump() | extra
        save_head(tmp, head, task.name, task.label_names, described, len(task.train), seconds, loss_value, **_image_meta(recipe))
    return {"train_seconds": seconds, "final_loss": loss_value, "trained_parameters": float(count)}


def _image_meta(recipe: ImageLoraRecipe) -> dict[str, Any]:
    """What an image head's ``head.json`` adds: the modality and the side it was trained at."""
    return {"modality": MODALITY, "size": recipe.size}


def _pin_base_model(config_path: Path) -> None:
    """Record the model's id, not None (a plain nn.Module has no hub name), as the base model."""
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = MODEL_NAME
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
