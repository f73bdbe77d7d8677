"""Inputs, one protocol per modality: how rows become the model's keyword tensors, which
token rows of a batch are real, and how a model's output becomes one feature vector per row.

- :mod:`~eigenmix.inputs.protocol`: the :class:`Inputs` protocol and :func:`row_mask`, the one
  rule by which everything live (``compose/``, ``explain/``, ``tune/``) learns which rows
  are real.
- :class:`TextInputs`: a tokenizer's padded batches (each row tokenised alone: a row is the
  same tokens in every batch and on every path), mean pooling over real tokens.
- :class:`ImageInputs`: images resized and normalised into ``pixel_values``; every position
  is real; spatial mean pooling.
"""

from eigenmix.inputs.images import ImageInputs
from eigenmix.inputs.protocol import Batches, Inputs, row_mask
from eigenmix.inputs.text import TextInputs, TextRow, mean_pool

__all__ = ["Batches", "ImageInputs", "Inputs", "TextInputs", "TextRow", "mean_pool", "row_mask"]
