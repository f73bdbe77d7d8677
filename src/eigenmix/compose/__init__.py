"""The live pieces: compositions of modules evaluated on a frozen model, without merging.

- :mod:`~eigenmix.compose.factors`: one layer's composition as factors around a learnable
  spectrum (``apply_delta`` never forms ``ΔW``).
- :mod:`~eigenmix.compose.sites`: the layers an update acts on as rows (``nn.Linear``, ``nn.Conv1d/2d``).
- :mod:`~eigenmix.compose.hooks`: the one hook mechanism (an update added to a site's output).
- :class:`Composition`: learnable spectral coefficients (what ``eigenmix.tune`` learns).
- :class:`Library`: named modules in spectral form, added and removed one at a time
  (:mod:`~eigenmix.compose.storage`: on disk).
- :func:`gram_statistics`, :class:`MergedGrams`: layer-input Grams of a model on a few rows
  per task (the calibrated merges' statistics).
- :class:`RoutedModel`: the library on a frozen model, mixed per input by a router
  (:mod:`~eigenmix.compose.routers`); mixed-adapter batches.
"""

from eigenmix.compose.composition import Composition, Granularity, Level
from eigenmix.compose.factors import LayerFactors, apply_delta, composed_factors, layer_factors
from eigenmix.compose.grams import MergedGrams, OwnGrams, gram_statistics
from eigenmix.compose.hooks import add_to_output, on_input, on_output
from eigenmix.compose.library import Entry, LayerView, Library
from eigenmix.compose.routing import Batch, RoutedModel, Router, mix, pooled, routed_update
from eigenmix.compose.sites import ConvSite, LinearSite, Site, site_at
from eigenmix.compose.storage import load_library, save_library

__all__ = [
    "Batch",
    "Composition",
    "ConvSite",
    "Entry",
    "Granularity",
    "LayerFactors",
    "LayerView",
    "Level",
    "Library",
    "LinearSite",
    "MergedGrams",
    "OwnGrams",
    "RoutedModel",
    "Router",
    "Site",
    "add_to_output",
    "apply_delta",
    "composed_factors",
    "gram_statistics",
    "layer_factors",
    "load_library",
    "mix",
    "on_input",
    "on_output",
    "pooled",
    "routed_update",
    "save_library",
    "site_at",
]
