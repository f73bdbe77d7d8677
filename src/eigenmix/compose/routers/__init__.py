"""Routers behind one small protocol (:class:`eigenmix.compose.routing.Router`), one file each.

- ``uniform``: every module at ``1/K`` (μ-routing; equals the ``linear`` average merge);
- ``given``: the caller's coefficients per row (mixed-adapter batches; the oracle);
- ``arrow``: Arrow's rule (Ostapenko et al., ICML 2024), as in PEFT's ``ArrowConfig``;
- ``spectral``: eigenmix's parameter-free router on ``V_kᵀ x`` (design note 5);
- ``learned``: a small gate trained from a few rows per task, the task as the only label.

Every router but ``given`` is registered by name with its settings and defaults
(:mod:`eigenmix.compose.routers.registry`: ``get_router``, ``all_routers``); importing this
package registers them.
"""

from eigenmix.compose.routers.arrow import ArrowRouter
from eigenmix.compose.routers.given import GivenRouter, one_hot
from eigenmix.compose.routers.learned import LearnedRouter, fit_gate, gate_features
from eigenmix.compose.routers.registry import RouterEntry, RouterParams, all_routers, get_router, router_names
from eigenmix.compose.routers.spectral import SpectralRouter, module_energy
from eigenmix.compose.routers.uniform import UniformRouter

__all__ = [
    "ArrowRouter",
    "GivenRouter",
    "LearnedRouter",
    "RouterEntry",
    "RouterParams",
    "SpectralRouter",
    "UniformRouter",
    "all_routers",
    "fit_gate",
    "gate_features",
    "get_router",
    "module_energy",
    "one_hot",
    "router_names",
]
