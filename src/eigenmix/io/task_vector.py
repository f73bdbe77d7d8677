"""Task vectors ``τ = W_ft − W_base`` from two full checkpoints, one tensor at a time.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023
(https://arxiv.org/abs/2212.04089). Both checkpoints are read lazily with
``safetensors.safe_open``, so peak memory is a few tensors, whatever the model size.
2-D weights become matrix :class:`DenseDelta` s (spectral candidates); other tensors
(biases, norms) stay dense deltas; tensors only the fine-tune has (a new classifier
head) become ``extras``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from eigenmix.errors import InvalidInputError, ShapeMismatchError
from eigenmix.io.safetensors_io import CheckpointReader
from eigenmix.modules import DenseDelta, Module


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


def iter_task_vector(base: CheckpointReader, finetuned: CheckpointReader) -> Iterator[tuple[str, DenseDelta]]:
    """Yield ``(base name, DenseDelta(W_ft − W_base))`` for every shared tensor, lazily.

    Differences are taken in float32 (or float64 for float64 weights) so that half-precision
    checkpoints do not lose the small updates to rounding.
    """
    mapping = align_names(base.keys(), finetuned.keys())
    if not mapping:
        raise InvalidInputError(f"{finetuned.path}: shares no tensor names with the base checkpoint {base.path}")
    for ft_name, base_name in mapping.items():
        shape_b, shape_f = base.shape(base_name), finetuned.shape(ft_name)
        if shape_b != shape_f:
            raise ShapeMismatchError(f"{finetuned.path}: tensor '{ft_name}' has shape {shape_f} but the base has {shape_b}")
        w_b, w_f = base.get(base_name), finetuned.get(ft_name)
        if not w_b.is_floating_point():
            continue  # integer buffers (position ids) are not weights
        dtype = torch.float64 if w_f.dtype == torch.float64 else torch.float32
        yield base_name, DenseDelta(w_f.to(dtype) - w_b.to(dtype))


def load_task_vector(
    base: Path | str,
    finetuned: Path | str,
    *,
    name: str | None = None,
    skip_zero: bool = True,
) -> Module:
    """Read ``W_ft − W_base`` for every shared tensor into a :class:`Module`.

    Args:
        base: the base checkpoint (``.safetensors`` file, or a folder with
            ``model.safetensors`` or a sharded index).
        finetuned: the fine-tuned checkpoint, same forms.
        name: module name (default: the fine-tuned path's name).
        skip_zero: leave out tensors the fine-tune did not change (frozen layers).

    Returns:
        A module whose layers are dense deltas named as in the base checkpoint; tensors
        only in the fine-tune are ``extras``.
    """
    with CheckpointReader(base) as rb, CheckpointReader(finetuned) as rf:
        mapping = align_names(rb.keys(), rf.keys())
        layers: dict[str, DenseDelta] = {}
        for base_name, delta in iter_task_vector(rb, rf):
            if skip_zero and not bool(delta.W.any()):
                continue
            layers[base_name] = delta
        extras = {n: rf.get(n) for n in rf.keys() if n not in mapping}  # noqa: SIM118 - reader, not a dict
    ft_path = Path(finetuned)
    return Module(
        name=name or ft_path.stem,
        layers=dict(layers),
        base_model=str(base),
        source=str(finetuned),
        extras=extras,
    )
