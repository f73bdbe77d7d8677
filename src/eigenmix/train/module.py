"""Train one module of any kind (:mod:`eigenmix.kinds`) plus its head on one text task.

The base encoder is frozen and unchanged; the kind's layers are hooked onto it, trained by
the one loop (:func:`eigenmix.train.loop.fit`), and saved as a PEFT LoRA adapter (rank and
scale per layer in its config) with the head beside it, so the module goes through merge,
library, route and explain like any adapter, and loads in PEFT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from eigenmix.data import Task
from eigenmix.io.atomic import Destination, atomic_dir
from eigenmix.io.heads import HEAD_META, save_head
from eigenmix.io.peft_lora import write_lora_files
from eigenmix.kinds import attach, get_kind, library_bases, target_layers
from eigenmix.modules import Module
from eigenmix.seeds import derived_seed
from eigenmix.train.encoder import MINILM_ID, EncoderClassifier, load_encoder
from eigenmix.train.loop import fit
from eigenmix.train.recipe import TrainRecipe


class ModuleRecipe(TrainRecipe):
    """A training recipe with its kind (``eigenmix.kinds``) and the kind's parameters."""

    kind: str = Field("lora", description="the training kind: lora, pissa, svf, spectral_adapter or orthogonal")
    params: dict[str, Any] = Field(default_factory=dict, description="the kind's parameters (e.g. r, alpha)")


def train_module(
    task: Task,
    recipe: ModuleRecipe,
    out: Destination | Path | str,
    *,
    library: Sequence[Module] = (),
    base_model: Path | str | None = None,
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train a module of ``recipe.kind`` and a head on ``task.train`` (orthogonal to
    ``library``'s modules for the ``orthogonal`` kind); save both atomically to ``out``.
    The encoder is ``base_model`` (a local folder), by default all-MiniLM-L6-v2.

    Returns:
        ``{"train_seconds": …, "final_loss": …, "trained_parameters": …}``.
    """
    kind = get_kind(recipe.kind)
    params = kind.parse_params(recipe.params)
    seed = derived_seed(recipe.seed, task.name)
    torch.manual_seed(seed)
    encoder, tokenizer = load_encoder(base_model)
    encoder.requires_grad_(False)
    bases = library_bases(library) if kind.needs_library else None
    trainable = attach(encoder, kind, params, target_layers(encoder, recipe.target_modules), seed=seed, library=bases)
    model = EncoderClassifier(encoder, encoder.config.hidden_size, task.num_labels)
    kind_lr = recipe.lr * params.lr_ratio
    groups = [{"params": trainable.parameters(), "lr": kind_lr}, {"params": list(model.head.parameters()), "lr": recipe.head_lr}]
    seconds, loss = fit(model, lambda _, enc: model(**enc), [task], tokenizer, groups, recipe, seed=recipe.seed, on_step=on_step)
    module = trainable.module(task.name, base_model=str(base_model) if base_model is not None else MINILM_ID)
    trainable.remove()
    count = sum(p.numel() for p in trainable.parameters())
    with atomic_dir(out, overwrite=overwrite, marker=HEAD_META) as tmp:
        write_lora_files(module, tmp)
        described = recipe.model_dump() | {"params": params.model_dump(), "trained_parameters": count}
        save_head(tmp, model.head, task.name, task.label_names, described, len(task.train), seconds, loss)
    return {"train_seconds": seconds, "final_loss": loss, "trained_parameters": float(count)}
