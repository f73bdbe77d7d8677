"""What every trainer writes beside its adapter: the head and its ``head.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from eigenmix.data import Task
from eigenmix.train.encoder import MINILM_ID


def save_head(folder: Path, head: nn.Module, task: Task, recipe: dict[str, Any], seconds: float, loss: float) -> None:
    """``head.safetensors`` and ``head.json`` (task, label names, recipe, rows, time, last loss) into ``folder``."""
    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(folder / "head.safetensors"))
    meta = {
        "task": task.name,
        "label_names": list(task.label_names),
        "recipe": recipe,
        "train_rows": len(task.train),
        "train_seconds": round(seconds, 3),
        "final_loss": loss,
    }
    (folder / "head.json").write_text(json.dumps(meta, indent=2) + "\n")


def pin_base_model_id(config_path: Path) -> None:
    """Record the hub id, not this machine's site-packages path, as the base model."""
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = MINILM_ID
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
