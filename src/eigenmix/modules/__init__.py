"""Module types: one layer's delta in low-rank, spectral or dense form, and a module."""

from eigenmix.modules.delta import (
    AnyDelta,
    DenseDelta,
    LowRankDelta,
    ReadDelta,
    SpectralDelta,
    TensorKind,
    delta_dtype,
    matrix_view,
    tensor_kind,
    with_kernel,
)
from eigenmix.modules.factors import factor_pair, layer_spectra, modules_work_dtype, work_dtype
from eigenmix.modules.module import MergeRecord, Module, PeftSource

__all__ = [
    "AnyDelta",
    "DenseDelta",
    "LowRankDelta",
    "MergeRecord",
    "Module",
    "PeftSource",
    "ReadDelta",
    "SpectralDelta",
    "TensorKind",
    "delta_dtype",
    "factor_pair",
    "layer_spectra",
    "matrix_view",
    "modules_work_dtype",
    "tensor_kind",
    "with_kernel",
    "work_dtype",
]
