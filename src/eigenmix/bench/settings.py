"""The benchmark's settings: one recipe for every task, one search budget for every method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eigenmix.bench.suites import QUICK_VISION_TASKS, VISION_TASKS, SuiteName
from eigenmix.errors import InvalidInputError
from eigenmix.train import LoraRecipe
from eigenmix.vision.train import ImageLoraRecipe

# The recipe of the committed full run (see benchmarks/README.md for how it was chosen).
FULL_RECIPE = LoraRecipe(steps=400, batch_size=16, max_length=64, lr=2e-3, head_lr=5e-3, warmup=0.1)
QUICK_RECIPE = FULL_RECIPE.model_copy(update={"steps": 50})
QUICK_TASKS = ("sst2", "ag_news", "trec")
# The vision suite's recipe: 64 px keeps a full run with training within 45 min on 2 cores
# (benchmarks/results/vision_resolution.json: what 64 px costs against 224 px).
VISION_RECIPE = ImageLoraRecipe(steps=200, batch_size=32, size=64)
QUICK_VISION_RECIPE = VISION_RECIPE.model_copy(update={"steps": 10, "size": 32})

# Every method's scale is searched with the same budget (7 validation passes): the coarse
# multiples of its own default, then the best one times each refinement factor.
SCALE_GRID = (0.125, 0.25, 0.5, 1.0, 2.0)
REFINE = (2**-0.5, 2**0.5)


class BenchSettings(BaseModel):
    """Everything that decides the numbers of a run (recorded in ``results.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    suite: SuiteName = Field(
        "text", description="text (all-MiniLM-L6-v2, task folders) or vision (EfficientNet-Lite0, Fashion-MNIST, MNIST)"
    )
    tasks: tuple[str, ...] = Field(description="task folders of the data folder, in order (comma-separated; default: every task)")
    methods: tuple[str, ...] = Field(description="registered merge methods (comma-separated; default: every registered method)")
    seed: int = Field(0, description="seeds the splits, the training and the random merges")
    recipe: LoraRecipe | ImageLoraRecipe = Field(FULL_RECIPE, description="the one LoRA recipe of every task (the suite's kind)")
    kind: str = Field(
        "lora",
        description="the training kind of every module (eigenmix.kinds; lora: PEFT's trainer); orthogonal: each module "
        "orthogonal to the modules of the tasks before it, in the order of --tasks",
    )
    kind_params: dict[str, Any] = Field({}, description="the kind's parameters besides its defaults (not lora's: the recipe has r, alpha)")
    val_rows: int = Field(48, ge=1, description="validation rows per task, carved from train (never trained on)")
    test_rows: int = Field(500, ge=0, description="test rows per task (the first N of the file); 0: all")
    probe_rows: int = Field(1000, ge=1, description="training rows per task for the floor's linear probe")
    scale_grid: tuple[float, ...] = Field(SCALE_GRID, description="multiples of each method's default scale tried first on validation")
    refine: tuple[float, ...] = Field(REFINE, description="factors applied to the best coarse scale, tried next")
    method_params: dict[str, dict] = Field(
        {"linear": {"normalize": True}},
        description="parameters other than a method's defaults (linear: the average, model soup; its plain sum is task_arithmetic)",
    )
    tokens_per_batch: int = Field(4096, ge=64, description="padded tokens per forward pass in evaluation")
    tuned: tuple[str, ...] = Field((), description="tuned entries (eigenmix.bench.tuned.TUNED), after the data-free methods")
    calibration_rows: tuple[int, ...] = Field(
        (16, 64), description="unlabeled training rows per task for the calibrated methods, one entry each (method(n=…))"
    )


def make_settings(
    data_dir: Path | None,
    *,
    tasks: tuple[str, ...] | None = None,
    methods: tuple[str, ...] | None = None,
    seed: int = 0,
    quick: bool = False,
    steps: int | None = None,
    test_rows: int | None = None,
    val_rows: int | None = None,
    tune: bool = False,
    calibration_rows: tuple[int, ...] | None = None,
    tuned: tuple[str, ...] | None = None,
    suite: SuiteName = "text",
    kind: str = "lora",
    kind_params: dict[str, Any] | None = None,
) -> BenchSettings:
    """The settings of a run; unknown methods fail here, before any work.

    Defaults: every task of the data folder and every registered method. ``quick``: the
    first 3 tasks (sst2, ag_news, trec for the bundled data), 50 training steps, 24
    validation and 120 test rows per task, a 200-row probe. ``tune``: every tuned entry too
    (or only ``tuned``).
    """
    from eigenmix.bench.tuned import TUNED
    from eigenmix.data import task_names
    from eigenmix.kinds import get_kind
    from eigenmix.merging import all_methods, get_method

    vision = suite == "vision"
    if tasks is None and vision:
        tasks = QUICK_VISION_TASKS if quick else VISION_TASKS
    elif tasks is None:
        tasks = QUICK_TASKS if quick and data_dir is None else tuple(task_names(data_dir))[: 3 if quick else None]
    methods = methods or tuple(m.name for m in all_methods())
    for method in methods:
        get_method(method)
    recipes = (QUICK_VISION_RECIPE, VISION_RECIPE) if vision else (QUICK_RECIPE, FULL_RECIPE)
    recipe = recipes[0 if quick else 1].model_copy(update={"seed": seed, **({"steps": steps} if steps else {})})
    sizes = {"val_rows": 24, "test_rows": 120, "probe_rows": 200} if quick else {}
    sizes.update({k: v for k, v in {"test_rows": test_rows, "val_rows": val_rows}.items() if v is not None})
    extra = {"calibration_rows": calibration_rows} if calibration_rows else {}
    unknown = [n for n in tuned or () if n not in TUNED]
    if unknown:
        raise InvalidInputError(f"unknown tuned entry '{unknown[0]}' (known: {', '.join(TUNED)})")
    entries = tuple(tuned) if tuned else tuple(TUNED) if tune else ()
    get_kind(kind).parse_params(kind_params or {})  # an unknown kind or parameter fails here, before any training
    if kind == "lora" and kind_params:
        raise InvalidInputError("the lora kind takes its rank and alpha from the recipe, not from kind parameters")
    chosen = {"kind": kind, "kind_params": kind_params or {}}
    return BenchSettings(suite=suite, tasks=tasks, methods=methods, seed=seed, recipe=recipe, tuned=entries, **chosen, **sizes, **extra)
