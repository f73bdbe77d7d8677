"""Interpretation: per-layer spectra of a module and subspace overlaps between modules."""

from eigenmix.inspect.overlap import LayerOverlap, mean_overlap, module_overlap
from eigenmix.inspect.spectra import LayerReport, layer_report, module_report
from eigenmix.inspect.tables import coefficients_table, overlap_summary, overlap_table, spectra_summary, spectra_table

__all__ = [
    "LayerOverlap",
    "LayerReport",
    "coefficients_table",
    "layer_report",
    "mean_overlap",
    "module_overlap",
    "module_report",
    "overlap_summary",
    "overlap_table",
    "spectra_summary",
    "spectra_table",
]
