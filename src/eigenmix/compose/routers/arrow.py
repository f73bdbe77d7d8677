"""Arrow routing (Ostapenko et al., "Towards Modular LLMs by Building and Reusing a Library of
LoRAs", ICML 2024, https://arxiv.org/abs/2405.11157), as PEFT 0.21 implements it
(``peft.tuners.lora.arrow.ArrowLoraLinearLayer``): per layer and per token, each module's
prototype is the top right singular vector ``v_k1`` of its ``ΔW_k``; the scores are
``|v_k1ᵀ x|`` (sign-agnostic, not normalised by ``‖x‖``), and the coefficients a softmax at
``temperature`` over the ``top_k`` highest (PEFT's defaults: 3 and 1.0).

PEFT finds ``v_k1`` by 15 power iterations from a random start in float32; here it is the
exact one (the library's SVD), so the two agree where the power iteration has converged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eigenmix.compose.library import LayerView
from eigenmix.compose.routing import Batch, Scope, mix


class ArrowRouter:
    """Arrow's rule; ``top_k`` and ``temperature`` as in PEFT's ``ArrowConfig``."""

    name = "arrow"
    scope: Scope = "layer"

    def __init__(self, top_k: int = 3, temperature: float = 1.0) -> None:
        self.top_k, self.temperature = top_k, temperature

    def coefficients(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        prototypes = torch.stack([V[:, 0] for V in view.V], dim=1).to(x.dtype)  # (n, K_l)
        return mix((x @ prototypes).abs(), self.temperature, self.top_k)
