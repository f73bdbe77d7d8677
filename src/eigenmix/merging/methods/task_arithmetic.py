"""Task Arithmetic: the scaled sum of task vectors."""

from __future__ import annotations

from pydantic import Field

from eigenmix.merging.continual import SUM
from eigenmix.merging.registry import LayerContext, MergeParams, register
from eigenmix.spectral import SVD, LayerSpectra


class TaskArithmeticParams(MergeParams):
    scale: float = Field(0.3, description="λ of the paper, chosen on validation there (0.3 for 8 tasks)")


@register(
    "task_arithmetic",
    params=TaskArithmeticParams,
    kind="spectral",
    description="λ · Σ w_k ΔW_k, the scaled sum of task vectors; factored",
    paper="Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023",
    url="https://arxiv.org/abs/2212.04089",
    vectors="sum",
    continual=SUM,
    linear_map=True,
)
def task_arithmetic(layer: LayerSpectra, p: TaskArithmeticParams, ctx: LayerContext) -> SVD:
    return layer.lift(p.scale * layer.weighted_sum())
