"""Learned spectral coefficients of a live composition (:class:`eigenmix.compose.Composition`)
whose only parameters are λ (and μ).

``build(model, modules)`` starts from a data-free merge; ``fit_coefficients`` learns the
coefficients from a little data with one of ``OBJECTIVES``; ``search_module_weights`` is
LoRAHub's gradient-free baseline; ``export_module`` / ``save_coefficients`` fix them.
"""

from eigenmix.tune.export import coefficient_summary, coefficient_tensors, export_module, save_coefficients
from eigenmix.tune.fit import TaskData, TuneResult, TuneSettings, fit_coefficients, objective_value, search_module_weights
from eigenmix.tune.live import build
from eigenmix.tune.objectives import OBJECTIVES

__all__ = [
    "OBJECTIVES",
    "TaskData",
    "TuneResult",
    "TuneSettings",
    "build",
    "coefficient_summary",
    "coefficient_tensors",
    "export_module",
    "fit_coefficients",
    "objective_value",
    "save_coefficients",
    "search_module_weights",
]
