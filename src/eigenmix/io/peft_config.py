"""PEFT LoRA ``adapter_config.json``: which fields eigenmix reads, which variants it
refuses, and the per-layer rank and scaling rules PEFT applies.

The scaling follows ``peft.tuners.lora.layer.LoraLayer.update_layer``: ``scale =
lora_alpha / r``, or ``lora_alpha / √r`` with ``use_rslora``; ``r`` and ``lora_alpha`` are
overridden per layer by the first key of ``rank_pattern`` / ``alpha_pattern`` that
matches the layer's name as ``re.match(rf"(.*\\.)?({key})$", name)`` (PEFT's
``get_pattern_key``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from eigenmix.errors import InvalidInputError, UnsupportedAdapterError

CONFIG_NAME = "adapter_config.json"

# Fields that change what the adapter computes beyond ``W0 + scale·B A``. A truthy value
# means a variant eigenmix would mis-read, so it is refused by name.
VARIANTS: dict[str, str] = {
    "use_dora": "DoRA (use_dora=true)",
    "lora_bias": "LoRA with a bias on lora_B (lora_bias=true)",
    "use_qalora": "QA-LoRA (use_qalora=true)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "layer_replication": "layer replication (layer_replication)",
    "target_parameters": "LoRA on nn.Parameter (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
}

# Fields that only concern initialisation, training or bookkeeping, not the maths of a
# trained adapter. Any field in neither list with a truthy value is refused too: eigenmix
# cannot tell whether it changes the maths.
NEUTRAL = {
    "peft_type", "task_type", "auto_mapping", "base_model_name_or_path", "revision",
    "inference_mode", "peft_version", "r", "lora_alpha", "target_modules", "exclude_modules",
    "lora_dropout", "fan_in_fan_out", "bias", "use_rslora", "modules_to_save",
    "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern",
    "alpha_pattern", "megatron_config", "megatron_core", "loftq_config", "eva_config",
    "corda_config", "lora_ga_config", "runtime_config", "ensure_weight_tying",
    "qalora_group_size",
}  # fmt: skip


def read_config(folder: Path) -> dict[str, Any]:
    """Read and check ``adapter_config.json`` of an adapter folder.

    Raises:
        InvalidInputError: missing or malformed file, missing ``r`` / ``lora_alpha``.
        UnsupportedAdapterError: a non-LoRA PEFT type or a LoRA variant (named).
    """
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise InvalidInputError(f"{folder}: no {CONFIG_NAME} (is this a PEFT adapter folder?)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise InvalidInputError(f"{path}: must hold a JSON object")
    check_supported(config, path)
    return config


def check_supported(config: dict[str, Any], path: Path | str) -> None:
    """Refuse non-LoRA types, math-changing variants, and missing or bad rank fields."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise UnsupportedAdapterError(f"{path}: PEFT type {peft_type} is not supported; eigenmix reads LoRA adapters")
    for key, what in VARIANTS.items():
        if config.get(key):
            raise UnsupportedAdapterError(f"{path}: {what} is not supported; it changes the maths of the update")
    for key, value in config.items():
        if key not in NEUTRAL and key not in VARIANTS and value:
            raise UnsupportedAdapterError(
                f"{path}: unknown LoRA config field '{key}'={value!r}; eigenmix cannot tell whether it changes the maths"
            )
    for key in ("r", "lora_alpha"):
        if key not in config:
            raise InvalidInputError(f"{path}: the config has no '{key}'")
    if not isinstance(config["r"], int) or isinstance(config["r"], bool) or config["r"] < 1:
        raise InvalidInputError(f"{path}: 'r' must be a positive integer; got {config['r']!r}")
    if not isinstance(config["lora_alpha"], int | float) or isinstance(config["lora_alpha"], bool):
        raise InvalidInputError(f"{path}: 'lora_alpha' must be a number; got {config['lora_alpha']!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise InvalidInputError(f"{path}: '{key}' must be an object")


def pattern_key(patterns: dict[str, Any], name: str) -> str | None:
    """The first key of ``patterns`` that matches layer ``name`` the way PEFT matches it."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def layer_rank_alpha(config: dict[str, Any], name: str) -> tuple[int, float]:
    """``(r, lora_alpha)`` for one layer after ``rank_pattern`` / ``alpha_pattern``."""
    ranks = config.get("rank_pattern") or {}
    alphas = config.get("alpha_pattern") or {}
    r_key, a_key = pattern_key(ranks, name), pattern_key(alphas, name)
    r = ranks[r_key] if r_key is not None else config["r"]
    alpha = alphas[a_key] if a_key is not None else config["lora_alpha"]
    return int(r), float(alpha)


def targets_layer(config: dict[str, Any], name: str) -> bool | None:
    """Whether ``target_modules`` selects layer ``name`` as PEFT selects it
    (``check_target_module_exists``: a string is a full-match regex; a list matches a name
    equal to an entry or ending in ``.entry``); None where PEFT decides from the base model
    (no ``target_modules``, or ``all-linear``)."""
    targets = config.get("target_modules")
    if not targets or targets == "all-linear":
        return None
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


def lora_scale(alpha: float, r: int, *, rslora: bool) -> float:
    """PEFT's scaling of ``B A``: ``alpha / r``, or ``alpha / √r`` for rsLoRA."""
    return alpha / math.sqrt(r) if rslora else alpha / r
