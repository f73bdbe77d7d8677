"""``spectral_adapter``: trained additions to the top-``r`` singular vectors of the base
weight (Spectral Adapter^A, Zhang and Pilanci, 2024): ``U_r → U_r + A_U``,
``V_r → V_r + A_V``, both zero at the start, the singular values fixed.

The update ``(U_r + A_U) S_r (V_r + A_V)ᵀ − U_r S_r V_rᵀ`` is saved as a LoRA of rank ``2r``:
``B = [U_r + A_U, U_r]``, ``A = [S_r (V_r + A_V)ᵀ; −S_r V_rᵀ]``. It trains ``r (m + n)``
numbers a layer, as LoRA of rank ``r`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eigenmix.kinds.registry import KindLayer, KindParams, LayerContext, TrainKind, register


class SpectralAdapterLayer(KindLayer):
    U: Tensor
    S: Tensor
    V: Tensor

    def __init__(self, W: Tensor, params: KindParams, ctx: LayerContext) -> None:
        super().__init__()
        r = self.keep_top_singular(W, params.r)
        self.AU = nn.Parameter(torch.zeros(W.shape[0], r))
        self.AV = nn.Parameter(torch.zeros(W.shape[1], r))

    def factors(self) -> tuple[Tensor, Tensor]:
        s = self.S.unsqueeze(1)
        return torch.cat([self.U + self.AU, self.U], 1), torch.cat([s * (self.V + self.AV).T, -s * self.V.T], 0)


KIND = register(
    TrainKind(
        "spectral_adapter",
        SpectralAdapterLayer,
        KindParams,
        description="trained additions to the base weight's top-r singular vectors (singular values fixed)",
        paper="Spectral Adapter: Fine-Tuning in Spectral Space (Zhang and Pilanci, NeurIPS 2024)",
        url="https://arxiv.org/abs/2405.13952",
        saved_rank="2r",
    )
)
