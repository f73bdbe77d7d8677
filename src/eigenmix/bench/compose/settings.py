"""The composition benchmark's settings (recorded in ``results.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from eigenmix.bench.settings import BenchSettings

Part = Literal["routing", "cost", "continual"]
PARTS: tuple[Part, ...] = ("routing", "cost", "continual")


class ComposeSettings(BaseModel):
    """Everything that decides the numbers of a composition run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bench: BenchSettings = Field(description="the merge benchmark's settings: tasks, recipe, seed, splits (the same adapters and heads)")
    parts: tuple[Part, ...] = Field(PARTS, description="which parts to run (routing, cost, continual)")
    calib_rows: int = Field(16, ge=1, description="unlabeled rows of its own task per module for the spectral router's statistics")
    gate_rows: int = Field(64, ge=1, description="rows per task for the learned gate (the task is the only label)")
    temperatures: tuple[float, ...] = Field((0.05, 0.2, 1.0), description="softmax temperatures tried on validation")
    top_ks: tuple[int | None, ...] = Field((1, None), description="top-k values tried on validation (None: dense)")
    cost_ks: tuple[int, ...] = Field((2, 4, 8, 16, 32), description="library sizes timed in the cost part")
    cost_rows: int = Field(32, ge=1, description="rows of the timed batch")
    cost_repeats: int = Field(7, ge=1, description="timed forward passes per entry (the median is reported)")
    orders: int = Field(3, ge=1, description="seeded task orders of the continual part")
    continual_rows: int = Field(200, ge=1, description="test rows per task in the continual part")
