"""``lora``: ``ΔW = (α/r) B A`` with ``A`` drawn as PEFT draws it (Kaiming-uniform, bound
``1/√n``) and ``B = 0`` (Hu et al., 2021)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from eigenmix.kinds.registry import KindLayer, KindParams, LayerContext, TrainKind, register


class LoraParams(KindParams):
    alpha: float = Field(16.0, gt=0, description="the update's scale is alpha / r (PEFT's lora_alpha)")


def lora_init(m: int, n: int, r: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """PEFT's start: ``B = 0`` ``(m, r)``, ``A`` ``(r, n)`` uniform in ``±1/√n`` (Kaiming-uniform, a = √5)."""
    bound = 1.0 / n**0.5
    return torch.zeros(m, r), (torch.rand(r, n, generator=generator) * 2 - 1) * bound


class LoraLayer(KindLayer):
    def __init__(self, W: Tensor, params: LoraParams, ctx: LayerContext) -> None:
        super().__init__()
        B, A = lora_init(W.shape[0], W.shape[1], params.r, ctx.generator)
        self.B, self.A = nn.Parameter(B), nn.Parameter(A)
        self.scale = params.alpha / params.r

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.scale * self.B, self.A


KIND = register(
    TrainKind(
        "lora",
        LoraLayer,  # type: ignore[arg-type]  # a KindLayer subclass is its own factory
        LoraParams,
        description="a low-rank update B A, A random and B zero at the start",
        paper="LoRA: Low-Rank Adaptation of Large Language Models (Hu et al., ICLR 2022)",
        url="https://arxiv.org/abs/2106.09685",
        saved_rank="r",
    )
)
