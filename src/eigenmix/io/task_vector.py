"""Task vectors ``τ = W_ft − W_base`` from two full checkpoints, one tensor at a time.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023
(https://arxiv.org/abs/2212.04089). Both checkpoints stay open (memory-mapped by
``safetensors.safe_open``) and each layer's difference is read when the merge asks for it
(:class:`LazyTaskVector`), so a merge holds one layer of each fine-tune at a time, whatever
the model size. 2-D weights become matrix :class:`DenseDelta` s (spectral candidates);
other tensors (biases, norms) stay dense deltas; tensors only the fine-tune has (a new
classifier head) become ``extras``. Every shared floating tensor is a layer, a frozen one
too (its delta is zero), as mergekit merges every tensor of every model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from eigenmix.errors import InvalidInputError, ShapeMismatchError
from eigenmix.io.safetensors_io import CheckpointReader
from eigenmix.modules import DenseDelta, Module, ReadDelta


def align_names(base: list[str], finetuned: list[str]) -> dict[str, str]:
    """Map fine-tuned tensor names to base names, allowing one leading component of
    difference (``bert.encoder.…`` in a classifier vs ``encoder.…`` in the bare model)."""
    base_set = set(base)
    direct = {n: n for n in finetuned if n in base_set}
    if len(direct) == len(base_set):
        return direct
    best = direct
    for prefix in {n.split(".", 1)[0] + "." for n in finetuned if "." in n}:
        mapped = {n: n.removeprefix(prefix) for n in finetuned if n.removeprefix(prefix) in base_set}
        if len(mapped) > len(best):
            best = mapped
    for prefix in {n.split(".", 1)[0] + "." for n in base if "." in n}:
        mapped = {n: prefix + n for n in finetuned if prefix + n in base_set}
        if len(mapped) > len(best):
            best = mapped
    return best


def task_delta(base: Tensor, finetuned: Tensor) -> Tensor:
    """``W_ft − W_base`` in float32 (float64 for float64 weights): half-precision checkpoints
    do not lose small updates to rounding. ``finetuned`` is a fresh read and is reused (when
    it is already float32) for the result; ``base`` is left as it is."""
    dtype = torch.float64 if finetuned.dtype == torch.float64 else torch.float32
    narrower = torch.promote_types(base.dtype, dtype) == dtype  # bf16/fp16/float32 subtract in place; a float64 base is cast first
    return finetuned.to(dtype).sub_(base if narrower else base.to(dtype))


class LazyTaskVector(Mapping[str, DenseDelta]):
    """Base tensor name → ``W_ft − W_base`` as a :class:`ReadDelta`: both tensors are read
    from the open checkpoints (checked for NaN/Inf) each time the delta is used, and not
    kept; shapes and dtypes come from the headers."""

    def __init__(self, base: CheckpointReader, finetuned: CheckpointReader, mapping: dict[str, str]) -> None:
        self.base, self.finetuned, self._names = base, finetuned, mapping  # base name → fine-tune name
        self.shapes = {name: base.shape(name) for name in mapping}
        # the dtype each delta is computed in (task_delta): float64 where the fine-tune is float64, else float32
        self.dtypes = {name: torch.float64 if finetuned.dtype(f) == torch.float64 else torch.float32 for name, f in mapping.items()}

    def __getitem__(self, name: str) -> DenseDelta:
        if name not in self._names:
            raise KeyError(name)
        return ReadDelta(lambda: task_delta(self.base.get(name), self.finetuned.get(self._names[name])), self.shapes[name],
                         self.dtypes[name])  # fmt: skip

    def __contains__(self, name: object) -> bool:  # Mapping's default reads the tensors
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def load_task_vector(
    base: Path | str | CheckpointReader,
    finetuned: Path | str,
    *,
    name: str | None = None,
) -> Module:
    """``W_ft − W_base`` for every shared floating tensor, as a :class:`Module` whose layers
    are read lazily (:class:`LazyTaskVector`; the checkpoints stay open while it lives).

    Args:
        base: the base checkpoint (``.safetensors`` file, or a folder with
            ``model.safetensors`` or a sharded index), or a reader of it that several
            fine-tunes share (:func:`shared_base`; opened with ``keep_last``, each base
            tensor is read once for all of them).
        finetuned: the fine-tuned checkpoint, same forms.
        name: module name (default: the fine-tuned path's name).

    Returns:
        A module whose layers are dense deltas named as in the base checkpoint; tensors
        only in the fine-tune are ``extras`` (read now: heads are small).

    Raises:
        InvalidInputError: no shared tensor, an unreadable or pickled checkpoint.
        ShapeMismatchError: a shared tensor of another shape.
    """
    base_path = base.path if isinstance(base, CheckpointReader) else Path(base)
    if base_path.resolve() == Path(finetuned).resolve():
        raise InvalidInputError(f"{finetuned}: is the base model itself; a fine-tune's task vector is taken against its base")
    rb = base if isinstance(base, CheckpointReader) else CheckpointReader(base)
    try:
        rf = CheckpointReader(finetuned)
    except BaseException:
        if rb is not base:
            rb.close()
        raise
    try:
        ft_to_base = align_names(rb.keys(), rf.keys())
        if not ft_to_base:
            raise InvalidInputError(f"{rf.path}: shares no tensor names with the base checkpoint {rb.path}")
        mapping = {}
        for ft_name, base_name in ft_to_base.items():
            if rb.shape(base_name) != rf.shape(ft_name):
                raise ShapeMismatchError(
                    f"{rf.path}: tensor '{ft_name}' has shape {rf.shape(ft_name)} but the base has {rb.shape(base_name)}"
                )
            if rb.dtype(base_name).is_floating_point:  # integer buffers (position ids) are not weights
                mapping[base_name] = ft_name
        extras = {n: rf.get(n) for n in rf.keys() if n not in ft_to_base}  # noqa: SIM118 - a reader, not a dict
    except BaseException:
        if rb is not base:
            rb.close()
        rf.close()
        raise
    return Module(name=name or Path(finetuned).stem, layers=LazyTaskVector(rb, rf, mapping), base_model=str(base_path),
                  source=str(finetuned), extras=extras)  # fmt: skip


def shared_base(modules: Sequence[Module]) -> CheckpointReader | None:
    """The base reader the modules' task vectors share (one reader for all of them), if any:
    a full-model writer reads the base through it too."""
    readers = {id(m.layers.base): m.layers.base for m in modules if isinstance(m.layers, LazyTaskVector)}
    return next(iter(readers.values())) if len(readers) == 1 else None
