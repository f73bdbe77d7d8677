"""The one numerical-rank rule of the package.

A singular value is numerically zero when it is at most ``rtol · σ_max``. The tolerance
comes from the dtype the *data* arrived in (not the dtype a computation ran in): a float32
adapter's directions below ten float32 roundoff units of its largest one cannot be told
from noise, even when the SVD itself runs in float64. Every rank cut in eigenmix (joint
bases, module spectra, merged outputs, exports, Procrustes factors) goes through
:func:`numerical_rank` with :func:`default_rtol` of the inputs' dtype, or with a tolerance
the caller states on purpose.
"""

from __future__ import annotations

import torch
from torch import Tensor


def default_rtol(dtype: torch.dtype) -> float:
    """Ten units of roundoff of ``dtype``: 1.2e-6 for float32, 2.2e-15 for float64, ~1e-2
    for half precision."""
    return 10 * torch.finfo(dtype).eps


def numerical_rank(S: Tensor, rtol: float) -> int:
    """How many of the non-increasing singular values ``S`` (``(r,)``) exceed ``rtol · S[0]``;
    0 for an empty or all-zero spectrum."""
    if S.numel() == 0 or not bool(S[0] > 0):
        return 0
    return int((S > rtol * S[0]).sum())
