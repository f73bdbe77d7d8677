"""``orthogonal``: a LoRA whose update lives in the orthogonal complement of a library's
modules, layer by layer — its column space orthogonal to theirs and its row space too — so
that a module added to a library interferes with the others as little as the data allows.

The constraint is exact, not a penalty: the trained ``B`` and ``A`` are projected,
``B' = (I − Q_out Q_outᵀ) B`` and ``A' = A (I − Q_in Q_inᵀ)``, with ``Q_out``/``Q_in`` the
orthonormal bases of the library's column/row spaces at that layer
(:func:`library_bases`). O-LoRA (Wang et al., 2023) penalises the overlap of the row
spaces only; here both sides are held, so ``ΔW_new`` and every earlier ``ΔW_k`` satisfy
``ΔW_kᵀ ΔW_new = 0`` and ``ΔW_k ΔW_newᵀ = 0``. A layer the library does not touch trains as
plain LoRA.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from eigenmix.kinds.lora import LoraParams, lora_init
from eigenmix.kinds.registry import KindLayer, LayerBasis, LayerContext, TrainKind, register
from eigenmix.modules import Module


def span(blocks: Iterable[Tensor], rtol: float = 1e-6) -> Tensor:
    """Orthonormal columns spanning the columns of ``blocks`` (singular values below
    ``rtol`` × the largest dropped), float64."""
    stacked = torch.cat([b.double() for b in blocks], 1)
    U, S, _ = torch.linalg.svd(stacked, full_matrices=False)
    return U[:, : int((S > rtol * S[0]).sum())] if len(S) and S[0] > 0 else U[:, :0]


def library_bases(modules: Iterable[Module], rtol: float = 1e-6) -> dict[str, LayerBasis]:
    """Per layer, the orthonormal bases of the column and row spaces the modules' updates
    use together (each update's kept singular vectors, stacked and orthonormalised)."""
    outs: dict[str, list[Tensor]] = {}
    ins: dict[str, list[Tensor]] = {}
    for module in modules:
        for name, delta in module.layers.items():
            f = delta.svd64()
            keep = f.S > rtol * f.S.max() if f.S.numel() else f.S.bool()
            outs.setdefault(name, []).append(f.U[:, keep])
            ins.setdefault(name, []).append(f.V[:, keep])
    return {name: LayerBasis(span(outs[name], rtol).float(), span(ins[name], rtol).float()) for name in outs}


class OrthogonalLayer(KindLayer):
    Q_out: Tensor
    Q_in: Tensor

    def __init__(self, W: Tensor, params: LoraParams, ctx: LayerContext) -> None:
        super().__init__()
        m, n = W.shape
        B, A = lora_init(m, n, params.r, ctx.generator)
        basis = ctx.library or LayerBasis(torch.zeros(m, 0), torch.zeros(n, 0))
        if basis.Q_out.shape[0] != m or basis.Q_in.shape[0] != n:
            raise ValueError(f"the library's bases are {tuple(basis.Q_out.shape)}, {tuple(basis.Q_in.shape)}; the layer is {m}×{n}")
        self.register_buffer("Q_out", basis.Q_out.float())
        self.register_buffer("Q_in", basis.Q_in.float())
        self.B, self.A = nn.Parameter(B), nn.Parameter(self._in(A))
        self.scale = params.alpha / params.r

    def _in(self, A: Tensor) -> Tensor:
        return A - (A @ self.Q_in) @ self.Q_in.T

    def factors(self) -> tuple[Tensor, Tensor]:
        B = self.B - self.Q_out @ (self.Q_out.T @ self.B)
        return self.scale * B, self._in(self.A)


KIND = register(
    TrainKind(
        "orthogonal",
        OrthogonalLayer,  # type: ignore[arg-type]
        LoraParams,
        description="a LoRA held to the orthogonal complement of a library's modules (row and column spaces, per layer)",
        paper="Orthogonal Subspace Learning for Language Model Continual Learning (O-LoRA; Wang et al., Findings of EMNLP 2023)",
        url="https://arxiv.org/abs/2310.14152",
        saved_rank="r",
        needs_library=True,
    )
)
