"""``pissa``: LoRA started on the weight's principal singular triplets (Meng et al., 2024).

PEFT's ``init_lora_weights="pissa"``: with ``W = U S Vᵀ`` and scale ``s = α/r``,
``B₀ = U_r √(S_r/s)``, ``A₀ = √(S_r/s) V_rᵀ``, and the model trains ``W − s B₀A₀ + s B A``.
Relative to the unchanged base that is the update ``s (B A − B₀ A₀)``: saved as a LoRA of
rank ``2r`` (PEFT's own conversion of a PiSSA adapter does the same), so the base model is
never rewritten.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from eigenmix.kinds.registry import KindLayer, KindParams, LayerContext, TrainKind, register


class PissaParams(KindParams):
    alpha: float | None = Field(None, gt=0, description="the update's scale is alpha / r (default: r, a scale of 1)")


def pissa_init(W: Tensor, r: int, scale: float) -> tuple[Tensor, Tensor]:
    """``(B₀, A₀)`` as PEFT computes them (float32 SVD of ``W``)."""
    U, S, Vh = torch.linalg.svd(W.float(), full_matrices=False)
    root = (S[:r] / scale).sqrt()
    return U[:, :r] @ torch.diag(root), torch.diag(root) @ Vh[:r]


class PissaLayer(KindLayer):
    B0: Tensor
    A0: Tensor

    def __init__(self, W: Tensor, params: PissaParams, ctx: LayerContext) -> None:
        super().__init__()
        self.scale = (params.alpha or params.r) / params.r
        B0, A0 = pissa_init(W, params.r, self.scale)
        self.B, self.A = nn.Parameter(B0.clone()), nn.Parameter(A0.clone())
        self.register_buffer("B0", B0)
        self.register_buffer("A0", A0)

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.scale * torch.cat([self.B, -self.B0], 1), torch.cat([self.A, self.A0], 0)


KIND = register(
    TrainKind(
        "pissa",
        PissaLayer,  # type: ignore[arg-type]
        PissaParams,
        description="LoRA started on the weight's top-r singular triplets (the residual stays frozen)",
        paper="PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language Models (Meng et al., NeurIPS 2024)",
        url="https://arxiv.org/abs/2404.02948",
        saved_rank="2r",
    )
)
