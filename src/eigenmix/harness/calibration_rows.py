"""Calibration rows as text: what ``eigenmix merge`` and the benchmark hand the calibrated
methods. Rows are read and tokenised and the model's layers checked before any work (every
mistake is one line then); the statistics themselves are computed block by block as the
merge asks for them (:class:`~eigenmix.compose.grams.OwnGrams`,
:class:`~eigenmix.compose.grams.MergedGrams`: one block's Grams held at a time)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from eigenmix.compose.grams import MergedGrams, OwnGrams
from eigenmix.data.images import read_image_inputs
from eigenmix.data.inputs import read_inputs
from eigenmix.errors import InvalidInputError
from eigenmix.inputs import TextInputs, TextRow
from eigenmix.merging.config import MergeConfig
from eigenmix.merging.statistics import GramSource, Kind
from eigenmix.modules import Module


def tokenized(inputs: TextInputs, rows: Sequence[TextRow], batch_size: int) -> list[dict[str, Tensor]]:
    """``rows`` as padded batches of at most ``batch_size`` rows (the one tokeniser)."""
    return [batch for _, batch in inputs.batches(rows, batch_size)]


def calibration_source(
    kind: Kind, model: nn.Module, modules: Sequence[Module], batches: list[list[dict[str, Tensor]]], sketch_above: int | None = None
) -> GramSource:
    """The statistics a method of calibration ``kind`` needs, from each module's batches."""
    stats = MergedGrams if kind == "merged" else OwnGrams
    return stats(model, modules, batches, sketch_above=sketch_above)


@dataclass(frozen=True)
class ConfigCalibration:
    """A config's calibration, ready to run: the source and the rows each module gives."""

    source: GramSource
    rows_used: dict[str, int]
    rows_asked: dict[str, int]


def config_calibration(config: MergeConfig, modules: Sequence[Module]) -> ConfigCalibration | None:
    """Read every module's rows, load the base model (offline) and tokenise: the calibration
    source of ``config``'s method, or None for a method that needs none."""
    from eigenmix.merging import get_method

    kind = get_method(config.method).calibration
    section = config.calibration
    if kind is None or section is None:
        return None
    base = config.base_model or next((m.base_model for m in modules if m.base_model), None)
    if base is None:
        raise InvalidInputError("calibration runs the base model: set 'base_model' (no adapter records one)")
    from eigenmix.harness.backbones import Row, is_vision, load_backbone

    if not is_vision(base):
        from eigenmix.train.encoder import encoder_path

        base = encoder_path(base)
    rows: list[Sequence[Row]] = []
    used, asked = {}, {}
    for entry in config.modules:  # every module's rows read (one line for a bad one) before the model loads
        spec = section.modules[entry.label]
        if is_vision(base):
            rows.append(read_image_inputs(spec.file, limit=spec.rows))
        else:
            rows.append(read_inputs(spec.file, spec.text_field, spec.pair_field, limit=spec.rows))
        used[entry.label], asked[entry.label] = len(rows[-1]), spec.rows
    backbone = load_backbone(base, max_length=section.max_length, image_size=section.image_size, options="calibration.")
    batches = [[batch for _, batch in backbone.batches(r, section.batch_size)] for r in rows]
    return ConfigCalibration(calibration_source(kind, backbone.model, modules, batches, section.sketch_above), used, asked)
