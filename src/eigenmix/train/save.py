"""What the text trainers write beside their adapter (the head itself: :func:`eigenmix.io.heads.save_head`)."""

from __future__ import annotations

import json
from pathlib import Path

from eigenmix.train.encoder import MINILM_ID


def pin_base_model_id(config_path: Path) -> None:
    """Record the hub id, not this machine's site-packages path, as the base model."""
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = MINILM_ID
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
