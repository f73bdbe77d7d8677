"""Explanations: which direction of which module changed a layer's computation on an input,
and by how much (design note 7), aggregated per token, input, layer, group and module, as
``explain.json`` and a self-contained ``report.html``.

A package of its own, above ``compose/`` and beside ``inspect/``: ``inspect/`` reads static
facts off modules (spectra, overlaps) and needs no model; an explanation runs a model on
inputs through the live pieces (hooks, a routed library), which ``inspect/`` may not import.
"""

from eigenmix.explain.attribution import SHARE_RULE, moments, numerators, part_matrix, responses, shares, token_numerators
from eigenmix.explain.directions import (
    RESIDUAL,
    LayerDirections,
    fit_coefficients,
    from_composition,
    from_factors,
    from_library,
    from_merge,
)
from eigenmix.explain.explanation import Explanation
from eigenmix.explain.live import LayerTally, Recorder, record_rows
from eigenmix.explain.view import ExplanationView, Row

__all__ = [
    "RESIDUAL",
    "SHARE_RULE",
    "Explanation",
    "ExplanationView",
    "LayerDirections",
    "LayerTally",
    "Recorder",
    "Row",
    "fit_coefficients",
    "from_composition",
    "from_factors",
    "from_library",
    "from_merge",
    "moments",
    "numerators",
    "part_matrix",
    "record_rows",
    "responses",
    "shares",
    "token_numerators",
]
