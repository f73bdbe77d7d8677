"""``spectral_adapter``: trained additions to the top-``r`` singular vectors of the base
weight (Spectral Adapter^A, Zhang and Pilanci, 2024): ``U_r → U_r + A_U S_r⁻¹``,
``V_r → V_r + A_V S_r⁻¹``, both zero at the start, the singular values fixed.

The additions are divided by the singular values (a reparametrisation: the same updates are
reachable): to first order the update is then ``A_U V_rᵀ + U_r A_Vᵀ``, so an optimizer step
moves the outputs as much as a LoRA step of the same learning rate does. Undivided, a step
is ``σ_i`` times larger: at the benchmark's learning rate (2e-3, 50 steps) such modules
scored 50.0 on sst2 and 28.0 on ag_news against LoRA's 76.0 and 83.0 (the pilot
``benchmarks/train_kinds.py`` of commit 2172758); divided, 74.0 and 85.5.

The update ``(U_r + A_U S_r⁻¹) S_r (V_r + A_V S_r⁻¹)ᵀ − U_r S_r V_rᵀ`` is saved as a LoRA of
rank ``2r``: ``B = [U_r + A_U S_r⁻¹, U_r]``, ``A = [S_r (V_r + A_V S_r⁻¹)ᵀ; −S_r V_rᵀ]``. It
trains ``r (m + n)`` numbers a layer, as LoRA of rank ``r`` does.
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
        sigma = self.S.clamp_min(1e-6)  # (no division by a zero singular value)
        U, V = self.U + self.AU / sigma, self.V + self.AV / sigma
        return torch.cat([U, self.U], 1), torch.cat([s * V.T, -s * self.V.T], 0)


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
