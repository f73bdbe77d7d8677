"""Train one PEFT LoRA adapter (plus its own linear head) on one text-classification task.

The adapter is saved in PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``,
encoder layers only, so adapters of different tasks merge cleanly); the head beside it as
``head.safetensors`` with ``head.json`` (task, label names).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import Field

from eigenmix.data import Task
from eigenmix.io.atomic import atomic_dir
from eigenmix.io.heads import HEAD_META, save_head
from eigenmix.seeds import derived_seed
from eigenmix.train.encoder import EncoderClassifier, load_encoder, predict
from eigenmix.train.loop import fit
from eigenmix.train.recipe import TrainRecipe
from eigenmix.train.save import pin_base_model_id


class LoraRecipe(TrainRecipe):
    """One LoRA training recipe (PEFT), used for every task."""

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scale = alpha / r)")


def train_adapter(
    task: Task,
    recipe: LoraRecipe,
    out: Path | str,
    *,
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train a LoRA adapter and head on ``task.train``; save both atomically to ``out``.

    Returns:
        ``{"train_seconds": …, "final_loss": …}``.
    """
    from peft import LoraConfig, get_peft_model

    # A per-task seed: with one seed for all tasks every adapter starts from the same
    # random lora_A, and since A moves little in short training their row spaces would
    # overlap by construction rather than by what the tasks learned.
    seed = derived_seed(recipe.seed, task.name)
    torch.manual_seed(seed)
    encoder, tokenizer = load_encoder()
    config = LoraConfig(r=recipe.r, lora_alpha=recipe.alpha, target_modules=recipe.target_modules, lora_dropout=0.0)  # type: ignore[arg-type]  # PEFT annotates an int; any number works
    peft_encoder = get_peft_model(encoder, config)
    model = EncoderClassifier(peft_encoder, encoder.config.hidden_size, task.num_labels)
    lora_params = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = [{"params": lora_params, "lr": recipe.lr}, {"params": list(model.head.parameters()), "lr": recipe.head_lr}]
    seconds, loss_value = fit(model, lambda _, enc: model(**enc), [task], tokenizer, groups, recipe, seed=recipe.seed, on_step=on_step)
    with atomic_dir(out, overwrite=overwrite, marker=HEAD_META) as tmp:
        peft_encoder.save_pretrained(str(tmp))
        pin_base_model_id(tmp / "adapter_config.json")
        save_head(tmp, model.head, task.name, task.label_names, recipe.model_dump(), len(task.train), seconds, loss_value)
    return {"train_seconds": seconds, "final_loss": loss_value}


def evaluate_adapter(adapter: Path | str, task: Task, *, limit: int | None = None, max_length: int = 64) -> float:
    """Test accuracy of a saved adapter + head on ``task.test`` (first ``limit`` rows)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    adapter = Path(adapter)
    encoder, tokenizer = load_encoder()
    peft_encoder = PeftModel.from_pretrained(encoder, str(adapter))
    head = load_file(str(adapter / "head.safetensors"))
    model = EncoderClassifier(peft_encoder, encoder.config.hidden_size, task.num_labels)
    model.head.load_state_dict(head)
    rows = list(task.test[:limit] if limit else task.test)
    preds = predict(model, tokenizer, rows, max_length)
    return float((preds == torch.tensor([r.label for r in rows])).float().mean())
