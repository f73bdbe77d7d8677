"""The benchmark's two suites: one protocol, two modalities.

- ``text``: all-MiniLM-L6-v2 with a LoRA per task on the task folders (the 8 bundled tasks);
- ``vision``: EfficientNet-Lite0 with a conv LoRA per task (:mod:`eigenmix.vision.train`)
  on four 5-way tasks whose images do not overlap, so a router has something to tell apart:
  Fashion-MNIST's tops (T-shirt/top, Pullover, Dress, Coat, Shirt) and the rest (Trouser,
  Sandal, Sneaker, Bag, Ankle boot), MNIST's digits 0–4 and 5–9. Fashion-MNIST keeps its
  own test split; the 5,000 MNIST digits have none, so a seeded 500 of each task's 2,500
  are its test rows. At most ``VISION_TRAIN_ROWS`` training images a task (before the
  validation rows are carved out).

A suite says which tasks there are, how an adapter is trained, and which base model
evaluates them; everything else (splits, caching, merges, routers, reports) is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from eigenmix.data import Task
from eigenmix.errors import InvalidInputError
from eigenmix.harness.evaluator import Evaluator
from eigenmix.modules import Module
from eigenmix.seeds import derived_seed

SuiteName = Literal["text", "vision"]
OnStep = Callable[[int, float], None]
Params = dict[str, Any] | None  # a training kind's parameters
Library = Sequence[Module]  # the modules an orthogonal module stays orthogonal to

FASHION_TOPS = ("T-shirt/top", "Pullover", "Dress", "Coat", "Shirt")
FASHION_REST = ("Trouser", "Sandal", "Sneaker", "Bag", "Ankle boot")
VISION_TASKS = ("fashion_tops", "fashion_rest", "digits_low", "digits_high")
QUICK_VISION_TASKS = ("fashion_rest", "digits_low")
VISION_TRAIN_ROWS = 2000
VISION_BASE = "efficientnet-lite0"


@dataclass(frozen=True)
class TextSuite:
    name: SuiteName = "text"

    @property
    def base(self) -> str:
        from eigenmix.train import MINILM_ID

        return MINILM_ID

    def tasks(self, names: tuple[str, ...], data_dir: Path | None, seed: int) -> list[Task]:
        from eigenmix.data import load_tasks

        return list(load_tasks(data_dir, names=list(names)))

    def train(
        self, task: Task, recipe: Any, folder: Path, on_step: OnStep, kind: str = "lora", params: Params = None, library: Library = ()
    ) -> None:
        """``kind`` lora: PEFT's LoRA trainer; another kind: :func:`eigenmix.train.train_module`
        with the recipe's schedule, the kind's ``params`` and the ``library`` it stays orthogonal to."""
        from eigenmix.train import ModuleRecipe, TrainRecipe, train_adapter, train_module

        if kind == "lora":
            train_adapter(task, recipe, folder, on_step=on_step)
            return
        schedule = recipe.model_dump(include=set(TrainRecipe.model_fields))
        train_module(task, ModuleRecipe(**schedule, kind=kind, params=params or {}), folder, library=library, on_step=on_step)

    def evaluator(self, recipe: Any, tokens_per_batch: int) -> Evaluator:
        return Evaluator(recipe.max_length, tokens_per_batch)

    def input_key(self, recipe: Any) -> dict[str, int]:
        """What of the recipe decides a probe's features besides the rows."""
        return {"max_length": recipe.max_length}


@dataclass(frozen=True)
class VisionSuite:
    name: SuiteName = "vision"
    base: str = VISION_BASE

    def tasks(self, names: tuple[str, ...], data_dir: Path | None, seed: int) -> list[Task]:
        if data_dir is not None:
            raise InvalidInputError("the vision suite reads Fashion-MNIST and MNIST (installed data); it takes no --data-dir")
        unknown = [n for n in names if n not in VISION_TASKS]
        if unknown:
            raise InvalidInputError(f"unknown vision task '{unknown[0]}' (known: {', '.join(VISION_TASKS)})")
        return [_vision_task(name, seed) for name in names]

    def train(
        self, task: Task, recipe: Any, folder: Path, on_step: OnStep, kind: str = "lora", params: Params = None, library: Library = ()
    ) -> None:
        """``kind`` lora: PEFT's conv LoRA trainer; another kind: :func:`eigenmix.vision.train_image_module`."""
        from eigenmix.data.images import image_set
        from eigenmix.vision import ImageTask, train_image_adapter, train_image_module

        names = task.label_names
        image_task = ImageTask(task.name, image_set(task.train, names), image_set(task.test, names))
        if kind == "lora":
            train_image_adapter(image_task, recipe, folder, on_step=on_step)
        else:
            train_image_module(image_task, recipe, folder, kind=kind, params=params, library=library, on_step=on_step)

    def evaluator(self, recipe: Any, tokens_per_batch: int) -> Evaluator:
        from eigenmix.harness.backbones import load_backbone

        return Evaluator(backbone=load_backbone(self.base, image_size=recipe.size))

    def input_key(self, recipe: Any) -> dict[str, int]:
        return {"size": recipe.size}


def get_suite(name: SuiteName) -> TextSuite | VisionSuite:
    return VisionSuite() if name == "vision" else TextSuite()


def _vision_task(name: str, seed: int) -> Task:
    from eigenmix.data.images import ImageSet, fashion_mnist, image_examples, mnist_digits
    from eigenmix.vision import class_subset

    if name.startswith("fashion"):
        classes: tuple[str, ...] = FASHION_TOPS if name == "fashion_tops" else FASHION_REST
        task = class_subset(name, fashion_mnist("train"), fashion_mnist("test"), classes)
        train, test = task.train, task.test
    else:
        classes = tuple(str(d) for d in (range(5) if name == "digits_low" else range(5, 10)))
        digits = mnist_digits()
        both = class_subset(name, digits, digits, classes).train  # sorted by class: shuffle, then cut
        order = torch.randperm(len(both), generator=torch.Generator().manual_seed(derived_seed(seed, f"{name}/test")))
        test_index, train_index = order[:500].sort().values, order[500:].sort().values
        train = ImageSet(both.images[train_index], both.labels[train_index], both.class_names)
        test = ImageSet(both.images[test_index], both.labels[test_index], both.class_names)
    keep = torch.arange(min(VISION_TRAIN_ROWS, len(train)))
    train = ImageSet(train.images[keep], train.labels[keep], train.class_names)
    return Task(name, image_examples(train), image_examples(test), tuple(classes))
