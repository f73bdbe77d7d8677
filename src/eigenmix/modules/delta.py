"""One layer's update ``ΔW`` in one of three forms, with conversions between them.

All three use the maths orientation ``(out, in)`` = ``(m, n)``: the layer computes
``y = (W0 + ΔW) x``. Layers stored transposed on disk (GPT-2's ``Conv1D``, PEFT's
``fan_in_fan_out``) are transposed at the I/O edge, never here.

- :class:`LowRankDelta`: ``ΔW = scale · B A`` (a LoRA layer).
- :class:`SpectralDelta`: ``ΔW = U diag(σ) Vᵀ`` (orthonormal ``U``, ``V``).
- :class:`DenseDelta`: any tensor (a full task vector); matrices can be decomposed.

**Tensors are classified by what they are** (:func:`tensor_kind`): a 2-D weight is a
matrix; a 3- to 5-D weight is a conv kernel ``(out, in/groups, *kernel_size)`` of a
Conv1d/2d/3d, which every delta holds as its matrix view ``(out, in/groups·∏kernel_size)``
(PEFT's and AdaLoRA's convention) with the kernel's own shape in ``kernel``; anything
else (biases, norms, scalars) is a vector. So every spectral method runs on the view, and
:meth:`tensor` gives the update back in the stored shape. A grouped conv's view is the
per-group block ``(out, in/g·kh·kw)`` (its weights as stored), not the block-diagonal map
of the whole layer: merges take it as it is; the live pieces (sites) refuse grouped convs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from eigenmix.spectral import SVD, factored_svd, rank_for_energy, svd, truncated_svd

TensorKind = Literal["matrix", "kernel", "vector"]
KERNEL_NDIMS = (3, 4, 5)  # Conv1d, Conv2d, Conv3d weights


def tensor_kind(shape: tuple[int, ...]) -> TensorKind:
    """What a weight of this shape is: a matrix ``(m, n)``, a conv kernel ``(out, in/g, *k)``
    merged as its matrix view, or a vector (bias, norm, scalar: merged by the method's
    vector rule)."""
    if len(shape) == 2:
        return "matrix"
    return "kernel" if len(shape) in KERNEL_NDIMS else "vector"


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """A conv kernel's matrix view ``(out, in/g·∏k)``; a matrix's own shape."""
    if tensor_kind(shape) == "vector":
        raise ValueError(f"a tensor of shape {tuple(shape)} is no matrix nor conv kernel")
    return (shape[0], math.prod(shape[1:]))


def _check_kernel(kernel: tuple[int, ...] | None, shape: tuple[int, int], what: str) -> None:
    if kernel is not None and (tensor_kind(kernel) != "kernel" or matrix_view(kernel) != tuple(shape)):
        raise ValueError(f"{what}: a kernel {tuple(kernel)} has the matrix view {matrix_view(kernel)}, not {tuple(shape)}")


@dataclass(frozen=True)
class LowRankDelta:
    """``ΔW = scale · B @ A``.

    Attributes:
        B: ``(m, r)`` — PEFT's ``lora_B.weight``.
        A: ``(r, n)`` — PEFT's ``lora_A.weight``.
        scale: ``lora_alpha / r`` (or ``lora_alpha / √r`` for rsLoRA).
        kernel: a conv layer's kernel shape ``(m, in/g, *k)`` whose matrix view is
            ``(m, n)`` (a conv LoRA: PEFT's ``lora_A`` is ``A`` as ``(r, in/g, *k)``,
            ``lora_B`` is ``B`` as ``(m, r, 1, …)``); None for a linear layer.
    """

    B: Tensor
    A: Tensor
    scale: float = 1.0
    kernel: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.B.ndim != 2 or self.A.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(f"LowRankDelta needs B (m, r), A (r, n); got {tuple(self.B.shape)}, {tuple(self.A.shape)}")
        _check_kernel(self.kernel, self.shape, "LowRankDelta")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        return self.kernel or self.shape

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def tensor(self) -> Tensor:
        """The dense update in the layer's stored shape (a conv kernel's own shape)."""
        return self.dense().reshape(self.tensor_shape)

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
        return SpectralDelta(f.U, f.S * abs(self.scale), f.V * (1.0 if self.scale >= 0 else -1.0), self.kernel)

    def lowrank(self) -> LowRankDelta:
        return self


@dataclass(frozen=True)
class SpectralDelta:
    """``ΔW = U diag(S) Vᵀ``.

    Attributes:
        U: ``(m, r)`` orthonormal columns.
        S: ``(r,)`` non-negative, non-increasing singular values.
        V: ``(n, r)`` orthonormal columns.
        kernel: a conv layer's kernel shape whose matrix view is ``(m, n)`` (None for a matrix).
    """

    U: Tensor
    S: Tensor
    V: Tensor
    kernel: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_kernel(self.kernel, self.shape, "SpectralDelta")

    @classmethod
    def from_svd(cls, f: SVD, kernel: tuple[int, ...] | None = None) -> SpectralDelta:
        return cls(f.U, f.S, f.V, kernel)

    @property
    def svd(self) -> SVD:
        return SVD(self.U, self.S, self.V)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.U.shape[0], self.V.shape[0])

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        return self.kernel or self.shape

    @property
    def rank(self) -> int:
        return self.S.shape[0]

    def dense(self) -> Tensor:
        return self.svd.dense()

    def tensor(self) -> Tensor:
        """The dense update in the layer's stored shape (a conv kernel's own shape)."""
        return self.dense().reshape(self.tensor_shape)

    def svd64(self) -> SVD:
        return self.svd.to(torch.float64)

    def spectral(self) -> SpectralDelta:
        return self

    def truncate(self, k: int) -> SpectralDelta:
        """Keep the ``k`` leading singular triplets."""
        return SpectralDelta.from_svd(self.svd.truncate(k), self.kernel)

    def lowrank(self) -> LowRankDelta:
        """Balanced factors ``B = U diag(√σ)``, ``A = diag(√σ) Vᵀ``, scale 1."""
        root = self.S.clamp(min=0).sqrt().to(self.U.dtype)
        return LowRankDelta(self.U * root, (self.V * root).T.contiguous(), 1.0, self.kernel)  # no copy when V is a transposed view


@dataclass(frozen=True)
class DenseDelta:
    """A full update tensor: a matrix ``(m, n)``, a vector, or a conv kernel given in its own
    shape and held as its matrix view (``W`` is then ``(out, in/g·∏k)`` and ``kernel`` the
    shape it came in; :meth:`tensor` gives it back)."""

    W: Tensor
    kernel: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if tensor_kind(tuple(self.W.shape)) == "kernel":
            if self.kernel is not None and tuple(self.kernel) != tuple(self.W.shape):
                raise ValueError(f"DenseDelta: a kernel of shape {tuple(self.W.shape)} given with kernel={self.kernel}")
            kernel = tuple(self.W.shape)
            object.__setattr__(self, "kernel", kernel)
            object.__setattr__(self, "W", self.W.reshape(matrix_view(kernel)))
        elif self.kernel is not None:
            _check_kernel(self.kernel, tuple(self.W.shape), "DenseDelta")  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.W.shape)

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        return self.kernel or self.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.W.dtype

    @property
    def is_matrix(self) -> bool:
        return self.W.ndim == 2

    def dense(self) -> Tensor:
        return self.W

    def tensor(self) -> Tensor:
        """The update in the layer's stored shape (a conv kernel's own shape)."""
        return self.dense().reshape(self.tensor_shape)

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
        return SpectralDelta.from_svd(f, self.kernel)

    def lowrank(self, rank: int | None = None, *, energy: float | None = None) -> LowRankDelta:
        return self.spectral(rank, energy=energy).lowrank()


class ReadDelta(DenseDelta):
    """A dense delta read from storage each time it is used, and not kept: ``read()``
    returns a fresh tensor of ``shape`` and ``dtype`` (known beforehand, from headers). A
    merge that uses each delta once (a weighted sum, a stack) holds one read at a time,
    and a layer's members cost nothing until then. A conv kernel's ``shape`` becomes
    ``kernel`` and the reads are given as its matrix view."""

    __eq__ = object.__eq__  # identity: comparing two reads of a checkpoint is no equality test
    __hash__ = object.__hash__
    _read: Callable[[], Tensor]
    _shape: tuple[int, ...]
    _dtype: torch.dtype

    def __init__(self, read: Callable[[], Tensor], shape: tuple[int, ...], dtype: torch.dtype) -> None:
        shape = tuple(shape)
        kernel = shape if tensor_kind(shape) == "kernel" else None
        object.__setattr__(self, "_read", read)
        object.__setattr__(self, "_shape", matrix_view(shape) if kernel else shape)
        object.__setattr__(self, "_dtype", dtype)
        object.__setattr__(self, "kernel", kernel)

    @property  # a read-only view of the parent's field
    def W(self) -> Tensor:
        return self._read().reshape(self._shape)

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
        return f"ReadDelta(shape={self.tensor_shape}, dtype={self._dtype})"


AnyDelta = LowRankDelta | SpectralDelta | DenseDelta


def with_kernel(delta: AnyDelta, kernel: tuple[int, ...] | None) -> AnyDelta:
    """``delta`` (a matrix view) marked as the conv kernel ``kernel`` (as it is when None)."""
    if kernel is None or getattr(delta, "kernel", None) == kernel:
        return delta
    return replace(delta, kernel=kernel)


def delta_dtype(delta: AnyDelta) -> torch.dtype:
    """The dtype a delta is stored in."""
    if isinstance(delta, LowRankDelta):
        return delta.A.dtype
    if isinstance(delta, SpectralDelta):
        return delta.U.dtype
    return delta.dtype
