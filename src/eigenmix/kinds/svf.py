"""``svf``: Singular Value Fine-tuning, one trained scale per singular value of the base
weight (Transformer², Sun et al., 2025): ``W' = U diag(S ⊙ z) Vᵀ``, ``z = 1`` at the start.

The update is ``U diag(S ⊙ (z − 1)) Vᵀ``: saved as a LoRA with ``B = U`` and
``A = diag(S ⊙ (z − 1)) Vᵀ``, of rank ``min(m, n)`` (or the top ``r`` singular values when
``r`` is given), with ``min(m, n)`` (or ``r``) trained numbers a layer.

The scales train at 10× the recipe's learning rate (``lr_ratio``): Adam moves each one by
about its learning rate a step, so at a LoRA's rate (2e-3) a scale that starts at 1 moves by
a few hundredths in 100 steps. The Spectral MoE's accuracy benchmark measured the same
parametrisation (its E = 1 layer): at 1× its per-task average was 80.4 against LoRA's 84.3,
at 30× 83.7 over 100 steps (``benchmarks/results/moe_accuracy.json``), while over 800
steps 30× fell to 74.7 and 10× reached 82.5 (``docs/benchmarks/moe.md``).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from eigenmix.kinds.registry import KindLayer, KindParams, LayerContext, TrainKind, register


class SvfParams(KindParams):
    r: int | None = Field(None, ge=1, description="scale only the top r singular values (default: every one, min(m, n))")  # type: ignore[assignment]
    lr_ratio: float = Field(
        10.0, gt=0, description="learning rate of the scales as a multiple of the recipe's (Adam moves a scale about lr a step)"
    )


class SvfLayer(KindLayer):
    U: Tensor
    S: Tensor
    V: Tensor

    def __init__(self, W: Tensor, params: SvfParams, ctx: LayerContext) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.ones(self.keep_top_singular(W, params.r)))

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.U, (self.S * (self.z - 1)).unsqueeze(1) * self.V.T


KIND = register(
    TrainKind(
        "svf",
        SvfLayer,  # type: ignore[arg-type]
        SvfParams,
        description="one trained scale per singular value of the base weight (z = 1 is the base model)",
        paper="Transformer²: Self-adaptive LLMs (Sun, Cetin and Tang, ICLR 2025)",
        url="https://arxiv.org/abs/2501.06252",
        saved_rank="min(m, n), or r",
    )
)
