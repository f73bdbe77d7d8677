"""Learned spectral coefficients: a live composition whose only parameters are λ (and μ).

``build(model, modules)`` starts from a data-free merge; ``fit_coefficients`` learns the
coefficients from a little data with one of ``OBJECTIVES``; ``search_module_weights`` is
LoRAHub's gradient-free baseline; ``export_module`` / ``save_coefficients`` fix them.
"""

from eigenmix.tune.export import coefficient_summary, coefficient_tensors, export_module, save_coefficients
from eigenmix.tune.factors import LayerFactors, apply_delta, composed_factors, layer_factors
from eigenmix.tune.fit import TaskData, TuneResult, TuneSettings, fit_coefficients, objective_value, search_module_weights
from eigenmix.tune.live import Composition, build
from eigenmix.tune.objectives import OBJECTIVES

__all__ = [
    "OBJECTIVES",
    "Composition",
    "LayerFactors",
    "TaskData",
    "TuneResult",
    "TuneSettings",
    "apply_delta",
    "build",
    "coefficient_summary",
    "coefficient_tensors",
    "composed_factors",
    "export_module",
    "fit_coefficients",
    "layer_factors",
    "objective_value",
    "save_coefficients",
    "search_module_weights",
]
