"""One layer's update ``ΔW`` in one of three forms, with conversions between them.

All three use the maths orientation ``(out, in)`` = ``(m, n)``: the layer computes
``y = (W0 + ΔW) x``. Layers stored transposed on disk (GPT-2's ``Conv1D``, PEFT's
``fan_in_fan_out``) are transposed at the I/O edge, never here.

- :class:`LowRankDelta`: ``ΔW = scale · B A`` (a LoRA layer).
- :class:`SpectralDelta`: ``ΔW = U diag(σ) Vᵀ`` (orthonormal ``U``, ``V``).
- :class:`DenseDelta`: any tensor (a full task vector); 2-D ones can be decomposed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from eigenmix.spectral import SVD, factored_svd, rank_for_energy, svd, truncated_svd


@dataclass(frozen=True)
class LowRankDelta:
    """``ΔW = scale · B @ A``.

    Attributes:
        B: ``(m, r)`` — PEFT's ``lora_B.weight``.
        A: ``(r, n)`` — PEFT's ``lora_A.weight``.
        scale: ``lora_alpha / r`` (or ``lora_alpha / √r`` for rsLoRA).
    """

    B: Tensor
    A: Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.B.ndim != 2 or self.A.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(f"LowRankDelta needs B (m, r), A (r, n); got {tuple(self.B.shape)}, {tuple(self.A.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def dense(self) -> Tensor:
        """``scale · B A``, shape ``(m, n)``, in float32 for half-precision factors (a rank-r
        sum of products rounded to bf16 loses ~3 digits, and fp16 products can overflow)."""
        if self.A.dtype in (torch.float16, torch.bfloat16):
            return (self.B.float() @ self.A.float()) * self.scale
        return (self.B @ self.A) * self.scale

    def svd64(self) -> SVD:
        """The exact SVD in float64 (half-precision factors whose product would overflow
        their own dtype still get finite singular values)."""
        f = factored_svd(self.B, self.A, dtype=torch.float64)
        return SVD(f.U, f.S * abs(self.scale), f.V * (1.0 if self.scale >= 0 else -1.0))

    def spectral(self) -> SpectralDelta:
        """Exact SVD without forming ``B A`` (see :func:`eigenmix.spectral.factored_svd`)."""
        f = factored_svd(self.B, self.A)
        return SpectralDelta(f.U, f.S * abs(self.scale), f.V * (1.0 if self.scale >= 0 else -1.0))

    def lowrank(self) -> LowRankDelta:
        return self


@dataclass(frozen=True)
class SpectralDelta:
    """``ΔW = U diag(S) Vᵀ``.

    Attributes:
        U: ``(m, r)`` orthonormal columns.
        S: ``(r,)`` non-negative, non-increasing singular values.
        V: ``(n, r)`` orthonormal columns.
    """

    U: Tensor
    S: Tensor
    V: Tensor

    @classmethod
    def from_svd(cls, f: SVD) -> SpectralDelta:
        return cls(f.U, f.S, f.V)

    @property
    def svd(self) -> SVD:
        return SVD(self.U, self.S, self.V)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.U.shape[0], self.V.shape[0])

    @property
    def rank(self) -> int:
        return self.S.shape[0]

    def dense(self) -> Tensor:
        return self.svd.dense()

    def svd64(self) -> SVD:
        return self.svd.to(torch.float64)

    def spectral(self) -> SpectralDelta:
        return self

    def truncate(self, k: int) -> SpectralDelta:
        """Keep the ``k`` leading singular triplets."""
        return SpectralDelta.from_svd(self.svd.truncate(k))

    def lowrank(self) -> LowRankDelta:
        """Balanced factors ``B = U diag(√σ)``, ``A = diag(√σ) Vᵀ``, scale 1."""
        root = self.S.clamp(min=0).sqrt().to(self.U.dtype)
        return LowRankDelta(self.U * root, (self.V * root).T.contiguous(), 1.0)  # no copy when V is a transposed view


@dataclass(frozen=True)
class DenseDelta:
    """A full update tensor (any shape; a matrix is ``(m, n)``)."""

    W: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.W.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.W.dtype

    @property
    def is_matrix(self) -> bool:
        return self.W.ndim == 2

    def dense(self) -> Tensor:
        return self.W

    def svd64(self) -> SVD:
        """The exact thin SVD of a matrix delta, in float64."""
        if not self.is_matrix:
            raise ValueError(f"only a matrix has a spectral form; this delta has shape {self.shape}")
        return truncated_svd(self.W.to(torch.float64))

    def spectral(
        self,
        rank: int | None = None,
        *,
        energy: float | None = None,
        randomized: bool | None = None,
        seed: int = 0,
    ) -> SpectralDelta:
        """Truncated SVD: to ``rank``, or to the smallest rank keeping ``energy``.

        With ``energy`` and no ``rank``, the exact SVD is computed and cut where the
        retained energy is reached. With ``rank``, the randomized SVD is used for ranks
        under a tenth of ``min(m, n)`` unless ``randomized`` says otherwise.
        """
        if not self.is_matrix:
            raise ValueError(f"only a matrix has a spectral form; this delta has shape {self.shape}")
        f = svd(self.W, rank, randomized=randomized, seed=seed)
        if energy is not None:
            f = f.truncate(rank_for_energy(f.S, energy))
        return SpectralDelta.from_svd(f)

    def lowrank(self, rank: int | None = None, *, energy: float | None = None) -> LowRankDelta:
        return self.spectral(rank, energy=energy).lowrank()


class ReadDelta(DenseDelta):
    """A dense delta read from storage each time it is used, and not kept: ``read()``
    returns a fresh tensor of ``shape`` and ``dtype`` (known beforehand, from headers). A
    merge that uses each delta once (a weighted sum, a stack) holds one read at a time,
    and a layer's members cost nothing until then."""

    __eq__ = object.__eq__  # identity: comparing two reads of a checkpoint is no equality test
    __hash__ = object.__hash__
    _read: Callable[[], Tensor]
    _shape: tuple[int, ...]
    _dtype: torch.dtype

    def __init__(self, read: Callable[[], Tensor], shape: tuple[int, ...], dtype: torch.dtype) -> None:
        object.__setattr__(self, "_read", read)
        object.__setattr__(self, "_shape", tuple(shape))
        object.__setattr__(self, "_dtype", dtype)

    @property  # a read-only view of the parent's field
    def W(self) -> Tensor:
        return self._read()

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def is_matrix(self) -> bool:
        return len(self._shape) == 2

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def __repr__(self) -> str:
        return f"ReadDelta(shape={self._shape}, dtype={self._dtype})"


AnyDelta = LowRankDelta | SpectralDelta | DenseDelta


def delta_dtype(delta: AnyDelta) -> torch.dtype:
    """The dtype a delta is stored in."""
    if isinstance(delta, LowRankDelta):
        return delta.A.dtype
    if isinstance(delta, SpectralDelta):
        return delta.U.dtype
    return delta.dtype
