"""Base models by name, each with its input kind: what the commands run a library, an
adapter or a merge on.

- ``sentence-transformers/all-MiniLM-L6-v2`` (bundled), or a local transformers folder: the
  encoder (its output's last hidden states, mean-pooled), :class:`~eigenmix.inputs.TextInputs`
  (``--max-length``); rows are JSONL text.
- ``efficientnet-lite0`` (bundled): EfficientNet-Lite0 with its ImageNet classifier removed
  (the output is the pooled 1280-d feature), :class:`~eigenmix.inputs.ImageInputs`
  (``--image-size``); rows are a folder of PNGs with ``labels.csv``, or an IDX images file.

A library, an adapter or a merge names its base model (``base_model_name_or_path``); the
commands load that one, offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from eigenmix.data.images import ImageRow, read_image_inputs
from eigenmix.data.inputs import InputRow, read_inputs
from eigenmix.errors import InvalidInputError
from eigenmix.inputs import Batches, ImageInputs, TextInputs

VISION = ("efficientnet-lite0",)
IMAGE_SIZE = 64  # the vision recipes' default side (a multiple of 32: EfficientNet-Lite's padding is exact)

Row = InputRow | ImageRow


@dataclass
class Backbone:
    """A frozen base model with its input kind.

    Attributes:
        name: its id (or local folder).
        model: the model; ``model(**batch)`` runs a batch of :attr:`inputs`.
        inputs: the input kind that makes its batches and pools its output.
    """

    name: str
    model: Any
    inputs: TextInputs | ImageInputs

    @property
    def kind(self) -> str:
        return self.inputs.kind

    def batches(self, rows: Sequence[Row], batch_size: int) -> Batches:
        """Batches of ``rows`` (text rows or image rows, as the backbone takes)."""
        if isinstance(self.inputs, ImageInputs):
            if not all(isinstance(r, ImageRow) for r in rows):
                raise InvalidInputError(f"base model '{self.name}' takes images; these inputs are text")
            return self.inputs.batches([r.image for r in rows], batch_size)  # type: ignore[union-attr]
        if not all(isinstance(r, InputRow) for r in rows):
            raise InvalidInputError(f"base model '{self.name}' takes text; these inputs are images")
        return self.inputs.batches(rows, batch_size)  # type: ignore[arg-type]

    def features(self, output: Any, batch: dict[str, Tensor]) -> Tensor:
        """One feature vector per row ``(rows, d)`` from the model's output on ``batch``."""
        return self.inputs.pool(output, batch)

    def tokens(self, batches: Batches) -> dict[int, tuple[str, ...]]:
        """Each row's tokens as strings (text; an image's are its positions, unnamed: empty)."""
        if isinstance(self.inputs, TextInputs):
            return self.inputs.tokens(batches)
        return {i: () for chunk, _ in batches for i in chunk}


def is_vision(name: str | Path | None) -> bool:
    return name is not None and str(name) in VISION


def load_backbone(name: str | Path, *, max_length: int = 128, image_size: int = IMAGE_SIZE, options: str = "--") -> Backbone:
    """The base model ``name`` (a bundled id or a local transformers folder), frozen, in eval
    mode, with its input kind; ``options`` prefixes the option names an error names
    (``--`` on the command line, ``calibration.`` in a merge config)."""
    if is_vision(name):
        from eigenmix.vision import inputs, load_efficientnet_lite0

        if image_size < 32 or image_size % 32:
            raise InvalidInputError(
                f"{options}image{'-' if options == '--' else '_'}size {image_size}: EfficientNet-Lite takes sides that are multiples of 32"
            )
        model = load_efficientnet_lite0()
        model._fc = nn.Identity()  # the output is the pooled feature, as the vision heads read it
        return Backbone(str(name), model.eval().requires_grad_(False), inputs(image_size))
    from eigenmix.train.encoder import load_encoder

    model, tokenizer = load_encoder(name)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        option = f"{options}max{'-' if options == '--' else '_'}length"
        raise InvalidInputError(
            f"{option} {max_length} exceeds the base model's {positions} positions: it reads at most {positions} tokens a row"
        )
    return Backbone(str(name), model.eval().requires_grad_(False), TextInputs(tokenizer, max_length))


def read_rows(
    path: Path, backbone: Backbone, *, text_field: str = "text", group_field: str | None = None, limit: int | None = None
) -> list[Row]:
    """The rows of ``--inputs`` for ``backbone`` (the first ``limit``): JSONL text, or images
    (a PNG folder, an IDX file: their labels are their groups)."""
    if backbone.kind == "image":
        return list(read_image_inputs(path, limit=limit))
    if path.is_dir():
        raise InvalidInputError(f"{path}: a folder; base model '{backbone.name}' takes text rows (a JSONL file)")
    return list(read_inputs(path, text_field=text_field, group_field=group_field, limit=limit))
