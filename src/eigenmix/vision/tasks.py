"""Image tasks: a named pair of :class:`~eigenmix.data.images.ImageSet` splits sharing their
class names, and the builders that make the usual concept tasks from one labelled data set:
a balanced "is it class c" task (:func:`one_vs_rest`), a subset of the classes
(:func:`class_subset`), classes pooled into groups (:func:`grouped`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from eigenmix.data.images import ImageSet
from eigenmix.errors import InvalidInputError
from eigenmix.seeds import derived_seed


@dataclass(frozen=True, eq=False)
class ImageTask:
    """A named image-classification task: a train and a test split with the same classes.

    Attributes:
        name: the task's name (seeds the training, names the adapter's head).
        train: the training images, ``uint8 (N, H, W)`` or ``(N, 3, H, W)``.
        test: the test images, the same class names.
    """

    name: str
    train: ImageSet
    test: ImageSet

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise InvalidInputError("an image task needs a non-empty name")
        _same_classes(self.name, self.train, self.test)
        if len(self.train.class_names) < 2:
            raise InvalidInputError(f"task {self.name!r}: needs at least 2 classes, got {list(self.train.class_names)}")
        for split, images in (("train", self.train), ("test", self.test)):
            if len(images) == 0:
                raise InvalidInputError(f"task {self.name!r}: the {split} split is empty")

    @property
    def label_names(self) -> tuple[str, ...]:
        """The class names, by label."""
        return self.train.class_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def image_task(name: str, train: ImageSet, test: ImageSet) -> ImageTask:
    """A task of two splits as they are (their labels and class names)."""
    return ImageTask(name, train, test)


def _same_classes(task: str, train: ImageSet, test: ImageSet) -> None:
    # checked before relabelling: afterwards both splits carry the new names whatever they held
    if train.class_names != test.class_names:
        raise InvalidInputError(f"task {task!r}: train and test class names differ: {list(train.class_names)} vs {list(test.class_names)}")


def _class_index(images: ImageSet, name: str, task: str) -> int:
    if name not in images.class_names:
        raise InvalidInputError(f"task {task!r}: unknown class {name!r}; the classes are {list(images.class_names)}")
    return images.class_names.index(name)


def relabel(images: ImageSet, mapping: Mapping[int, int], names: Sequence[str]) -> ImageSet:
    """The images whose label is a key of ``mapping``, in their order, labelled ``mapping[label]``.

    Args:
        images: the set.
        mapping: old label → new label in ``[0, len(names))``; labels not in it are dropped.
        names: the new class names.

    Returns:
        An :class:`ImageSet` of the kept images (``(M, …)``, ``M ≤ N``).
    """
    table = torch.full((images.num_classes,), -1, dtype=torch.int64)  # old label → new, -1: dropped
    for old, new in mapping.items():
        table[old] = new
    new_labels = table[images.labels]  # (N,)
    keep = new_labels >= 0
    return ImageSet(images.images[keep], new_labels[keep], tuple(names))


def _balanced_binary(images: ImageSet, positive: int, ratio: int, seed: int, where: str) -> ImageSet:
    """Every image of class ``positive`` (label 1) and ``ratio`` times as many others (label 0),
    drawn without replacement by ``seed``, in the set's order."""
    is_pos = images.labels == positive
    pos, neg = is_pos.nonzero().flatten(), (~is_pos).nonzero().flatten()
    want = ratio * pos.numel()
    if pos.numel() == 0:
        raise InvalidInputError(f"{where}: no image of class {images.class_names[positive]!r}")
    if neg.numel() < want:
        raise InvalidInputError(f"{where}: {neg.numel()} images of other classes, {want} needed ({ratio} per positive)")
    chosen = neg[torch.randperm(neg.numel(), generator=torch.Generator().manual_seed(seed))[:want]]
    index = torch.cat([pos, chosen]).sort().values
    return ImageSet(images.images[index], is_pos[index].long(), ("other", images.class_names[positive]))


def one_vs_rest(
    name: str, train: ImageSet, test: ImageSet, positive_class: str, *, negatives_per_positive: int = 1, seed: int = 0
) -> ImageTask:
    """A balanced binary concept task, "is it ``positive_class``": per split every image of the
    class (label 1) and ``negatives_per_positive`` times as many of the other classes (label 0),
    drawn at random (``derived_seed(seed, name/split)``); class names ``("other", positive_class)``.

    Raises:
        InvalidInputError: an unknown class, a split without it, too few other images.
    """
    if negatives_per_positive < 1:
        raise InvalidInputError(f"task {name!r}: negatives_per_positive must be >= 1, got {negatives_per_positive}")
    _same_classes(name, train, test)
    positive = _class_index(train, positive_class, name)
    splits = [
        _balanced_binary(s, positive, negatives_per_positive, derived_seed(seed, f"{name}/{split}"), f"task {name!r}, {split} split")
        for split, s in (("train", train), ("test", test))
    ]
    return ImageTask(name, *splits)


def class_subset(name: str, train: ImageSet, test: ImageSet, classes: Sequence[str]) -> ImageTask:
    """A k-way task on some of the classes, relabelled ``0 … k−1`` in the order given
    (e.g. footwear: ``["Sandal", "Sneaker", "Ankle boot"]``).

    Raises:
        InvalidInputError: an unknown or repeated class, fewer than 2 classes, an empty split.
    """
    if len(set(classes)) != len(classes):
        raise InvalidInputError(f"task {name!r}: a class is named twice in {list(classes)}")
    _same_classes(name, train, test)
    mapping = {_class_index(train, c, name): k for k, c in enumerate(classes)}
    return ImageTask(name, relabel(train, mapping, classes), relabel(test, mapping, classes))


def grouped(name: str, train: ImageSet, test: ImageSet, groups: Mapping[str, Sequence[str]]) -> ImageTask:
    """A task whose labels are groups of classes, in the mapping's order (e.g. ``{"tops":
    ["T-shirt/top", "Pullover", "Shirt"], "footwear": ["Sandal", "Sneaker", "Ankle boot"]}``);
    images of classes in no group are left out.

    Raises:
        InvalidInputError: an unknown class, a class in two groups, an empty group, fewer than
            2 groups, an empty split.
    """
    _same_classes(name, train, test)
    mapping: dict[int, int] = {}
    for k, (group, members) in enumerate(groups.items()):
        if not members:
            raise InvalidInputError(f"task {name!r}: group {group!r} has no classes")
        for c in members:
            old = _class_index(train, c, name)
            if old in mapping:
                raise InvalidInputError(f"task {name!r}: class {c!r} is named twice (a class belongs to one group)")
            mapping[old] = k
    names = list(groups)
    return ImageTask(name, relabel(train, mapping, names), relabel(test, mapping, names))
