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
from pydantic import Field
from torch import Tensor, nn

from eigenmix.compose.library import LayerView, Library
from eigenmix.compose.routers.registry import RouterParams, Stream, register
from eigenmix.compose.routing import Batch, Scope, mix


class ArrowParams(RouterParams):
    """Arrow's settings, at PEFT's ``ArrowConfig`` defaults."""

    top_k: int = Field(3, ge=1, description="the modules each token mixes: the k highest scores")
    temperature: float = Field(1.0, gt=0, description="softmax temperature")


_D = ArrowParams()  # the constructor's defaults are the registered ones


class ArrowRouter:
    """Arrow's rule; ``top_k`` and ``temperature`` as in PEFT's ``ArrowConfig``."""

    name = "arrow"
    scope: Scope = "layer"

    def __init__(self, top_k: int = _D.top_k, temperature: float = _D.temperature) -> None:
        self.top_k, self.temperature = top_k, temperature

    def coefficients(self, layer: str, x: Tensor, view: LayerView, batch: Batch) -> Tensor:
        prototypes = torch.stack([V[:, 0] for V in view.V], dim=1).to(x.dtype)  # (n, K_l)
        return mix((x @ prototypes).abs(), self.temperature, self.top_k)


@register(
    "arrow",
    router=ArrowRouter,
    params=ArrowParams,
    description="per token, |v_k1ᵀ x| on each module's top right singular vector; a softmax over the top k (as PEFT's ArrowConfig)",
    paper='Ostapenko et al., "Towards Modular LLMs by Building and Reusing a Library of LoRAs", ICML 2024',
    url="https://arxiv.org/abs/2405.11157",
)
def build_arrow(library: Library, model: nn.Module, p: ArrowParams, stream: Stream | None) -> ArrowRouter:
    return ArrowRouter(top_k=p.top_k, temperature=p.temperature)
