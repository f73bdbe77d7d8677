"""Heads on frozen features, and trained image adapters loaded and evaluated: the pooled
features of images (:func:`image_features`), a deterministic linear probe
(:func:`fit_linear_head`), an adapter folder with its head (:func:`load_image_adapter`) and its
test accuracy (:func:`evaluate_image_adapter`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eigenmix.errors import InvalidInputError
from eigenmix.io.heads import HEAD_FILE, HEAD_META, has_head, head_meta
from eigenmix.io.safetensors_io import read_safetensors
from eigenmix.vision.backbone import FEATURE_DIM, features, inputs, load_efficientnet_lite0
from eigenmix.vision.tasks import ImageTask
from eigenmix.vision.train import MODALITY


@torch.no_grad()
def image_features(model: nn.Module, images: Tensor, size: int, *, batch_size: int = 64) -> Tensor:
    """The pooled features of images, in batches, without gradients (the model is put in eval mode).

    Args:
        model: Lite0 or a PEFT model wrapping it.
        images: ``uint8 (N, H, W)`` or ``(N, 3, H, W)``.
        size: the side the images are resized to.

    Returns:
        ``float32 (N, 1280)``.
    """
    model.eval()
    pixels = inputs(size).pixels
    return torch.cat([features(model, pixels(chunk)) for chunk in images.split(batch_size)])


def fit_linear_head(features: Tensor, labels: Tensor, classes: int, *, l2: float = 1e-3, steps: int = 100) -> nn.Linear:
    """A linear head on frozen features: multinomial logistic regression, full batch, by
    L-BFGS from zero in float64 — deterministic, and fit for a few labelled images per class.

    The features are standardised for the solve (so ``l2`` weighs every feature alike) and the
    scaling is folded back into the head's weight and bias.

    Args:
        features: ``(N, d)``.
        labels: ``int64 (N,)`` in ``[0, classes)``.
        classes: the number of classes.
        l2: the penalty ``l2 / 2 · ‖W‖²`` (on standardised features) added to the mean loss.
        steps: L-BFGS iterations at most.

    Returns:
        ``nn.Linear(d, classes)``, float32.
    """
    if features.dim() != 2 or not features.is_floating_point() or features.shape[0] == 0:
        raise InvalidInputError(f"features must be a non-empty float (N, d) tensor, got {features.dtype} {tuple(features.shape)}")
    if labels.dtype != torch.int64 or labels.shape != features.shape[:1]:
        raise InvalidInputError(f"labels must be int64 ({features.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
    if classes < 2 or int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise InvalidInputError(f"labels must lie in [0, {classes}) with classes >= 2, got [{int(labels.min())}, {int(labels.max())}]")
    x = features.detach().double()
    mean, std = x.mean(0), x.std(0, correction=0).clamp_min(1e-6)  # (d,), (d,)
    z = (x - mean) / std  # (N, d)
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    solver = torch.optim.LBFGS([weight, bias], max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        solver.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, labels) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    solver.step(closure)
    head = nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        scaled = weight / std  # (classes, d): W (x − μ) / σ = (W / σ) x − (W / σ) μ
        head.weight.copy_(scaled)
        head.bias.copy_(bias - scaled @ mean)
    return head


def load_image_adapter(folder: Path | str) -> tuple[nn.Module, nn.Linear, dict[str, Any]]:
    """An adapter of :func:`train_image_adapter` on a fresh Lite0, its head and its ``head.json``.

    Returns:
        ``(PEFT model in eval mode, head nn.Linear(1280, classes), head.json)``.

    Raises:
        InvalidInputError: a missing folder or head, a head that is not an image head, a head
            whose shape disagrees with its label names.
    """
    from peft import PeftModel

    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: no such adapter folder")
    if not has_head(folder):
        raise InvalidInputError(f"{folder}: has no {HEAD_FILE}; an image adapter is trained with its head")
    meta = head_meta(folder)
    if meta.get("modality") != MODALITY or not isinstance(meta.get("size"), int):
        raise InvalidInputError(f"{folder}: {HEAD_META} is not an image head's (needs modality 'image' and an integer size)")
    labels = meta.get("label_names")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(name, str) for name in labels):
        raise InvalidInputError(f"{folder}: {HEAD_META} has no list of label_names (at least 2 strings)")
    state = read_safetensors(folder / HEAD_FILE)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != {"weight": (len(labels), FEATURE_DIM), "bias": (len(labels),)}:
        raise InvalidInputError(
            f"{folder}: {HEAD_FILE} holds {shapes}, expected weight ({len(labels)}, {FEATURE_DIM}) and bias ({len(labels)},)"
        )
    head = nn.Linear(FEATURE_DIM, len(labels))
    head.load_state_dict(state)
    model = PeftModel.from_pretrained(load_efficientnet_lite0(), str(folder))
    return cast(nn.Module, model.eval()), head.eval(), meta


def evaluate_image_adapter(folder: Path | str, task: ImageTask, *, limit: int | None = None, batch_size: int = 64) -> float:
    """Test accuracy of a saved adapter + head on ``task.test`` (its first ``limit`` images),
    at the size the adapter was trained at.

    Raises:
        InvalidInputError: what :func:`load_image_adapter` raises; label names that differ
            from the task's; ``limit < 1``.
    """
    if limit is not None and limit < 1:
        raise InvalidInputError(f"limit must be >= 1, got {limit}")
    model, head, meta = load_image_adapter(folder)
    if tuple(meta["label_names"]) != task.label_names:
        raise InvalidInputError(f"{folder}: its head's labels {meta['label_names']} are not task {task.name!r}'s {list(task.label_names)}")
    images, labels = task.test.images[:limit], task.test.labels[:limit]
    with torch.no_grad():
        predicted = head(image_features(model, images, meta["size"], batch_size=batch_size)).argmax(-1)  # (N,)
    return float((predicted == labels).double().mean())
