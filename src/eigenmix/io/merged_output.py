"""Write a merged module: as a PEFT LoRA adapter (exact rank, or truncated with the
retained energy reported per layer), or as a full model (base + merged delta) in the
base model's own safetensors layout. Non-delta tensors of the inputs (classifier heads)
are written per task beside the output, never dropped."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from eigenmix.errors import InvalidInputError
from eigenmix.io.peft_config import CONFIG_NAME
from eigenmix.io.peft_lora import PREFIX, WEIGHTS_NAME, lora_config, peft_factors
from eigenmix.io.stream_writer import StreamWriter
from eigenmix.modules import AnyDelta, DenseDelta, SpectralDelta
from eigenmix.spectral import default_rtol, numerical_rank, retained_energy


@dataclass(frozen=True)
class LayerOutput:
    """How one layer was written: its rank, its exact (numerical) rank, and the share of
    its energy kept."""

    layer: str
    rank: int
    retained_energy: float
    exact_rank: int


def spectral_form(name: str, delta: AnyDelta, rank: int | None) -> tuple[SpectralDelta, LayerOutput]:
    """A merged layer as a spectral delta, at its exact numerical rank or cut to ``rank``
    (a ``rank`` above the exact rank writes the exact rank; :class:`LayerOutput` says so)."""
    if isinstance(delta, DenseDelta) and not delta.is_matrix:
        raise InvalidInputError(
            f"layer '{name}' is a {delta.W.ndim}-D delta (a bias or norm); a LoRA adapter cannot hold it: write a full model"
        )
    spec = delta.spectral() if not isinstance(delta, SpectralDelta) else delta
    S = spec.S.to(torch.float64)
    exact = numerical_rank(S, default_rtol(spec.S.dtype))
    if exact == 0:  # a layer merged to zero: PEFT needs r ≥ 1, so one zero direction
        m, n = delta.shape
        zero = SpectralDelta(spec.U.new_zeros(m, 1), spec.U.new_zeros(1), spec.U.new_zeros(n, 1), spec.kernel)
        return zero, LayerOutput(name, 1, 1.0, 0)
    keep = exact if rank is None else min(rank, exact)
    return spec.truncate(keep), LayerOutput(name, keep, retained_energy(S, keep), exact)


def write_extras(extras: Mapping[str, torch.Tensor], folder: Path) -> list[str]:
    """Per-task non-delta tensors (``"task/name"`` keys) → ``extras/<task>.safetensors``."""
    by_task: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in extras.items():
        task, _, name = key.partition("/")
        by_task.setdefault(task, {})[name or task] = tensor.contiguous()
    if by_task:
        (folder / "extras").mkdir()
    for task, tensors in by_task.items():
        save_file(tensors, str(folder / "extras" / f"{task}.safetensors"))
    return sorted(by_task)


def stream_merged_adapter(
    layers: Iterable[tuple[str, AnyDelta]],
    names: list[str],
    folder: Path,
    rank: int | None,
    *,
    base_model: str | None = None,
    fan_in_fan_out: bool = False,
    dtype: torch.dtype | None = None,
) -> list[LayerOutput]:
    """Write merged layers as a PEFT LoRA adapter into ``folder`` as they arrive.

    Each layer is cut to ``rank`` (or kept at its exact rank), written as balanced
    factors (in ``dtype``; default: the merge's own), and dropped, so memory holds one
    layer of output at a time.

    Args:
        layers: ``(name, delta)`` pairs, e.g. from :func:`eigenmix.merging.iter_merge`.
        names: every layer name that will come (sizes the file header).
    """
    keys = [f"{PREFIX}{n}.lora_{x}.weight" for n in names for x in "AB"]
    ranks: dict[str, tuple[int, float]] = {}
    report = []
    with StreamWriter(folder / WEIGHTS_NAME, keys, {"format": "pt"}) as writer:
        for name, delta in layers:
            spec, row = spectral_form(name, delta, rank)
            low = spec.lowrank()
            lora_A, lora_B = peft_factors(low, dtype)
            writer.add(f"{PREFIX}{name}.lora_A.weight", lora_A)
            writer.add(f"{PREFIX}{name}.lora_B.weight", lora_B)
            ranks[name] = (low.rank, low.scale)
            report.append(row)
    config = lora_config(ranks, fan_in_fan_out=fan_in_fan_out, base_model=base_model)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return report


def write_report(path: Path, payload: dict, layers: list[LayerOutput]) -> None:
    """A merge report (``merge_report.json``): the resolved config and, per layer, the written
    rank, the exact rank and the retained energy; a note where ``output.rank`` exceeded some
    layer's exact rank (those layers are written at their exact rank)."""
    rows = [asdict(r) for r in layers]
    rank = payload.get("config", {}).get("output", {}).get("rank")
    short = [r for r in layers if rank is not None and 0 < r.exact_rank < rank]
    notes = []
    zeros = [r.layer for r in layers if r.exact_rank == 0]
    if zeros:
        notes.append(f"{len(zeros)} layer(s) merged to zero (the first: {zeros[0]}); written as one zero direction")
    if short:
        ranks = sorted({r.exact_rank for r in short})
        notes.append(f"output.rank {rank} exceeds the exact rank ({ranks[0]}–{ranks[-1]}) of {len(short)} layer(s): written at that rank")
    path.write_text(json.dumps({**payload, "notes": notes, "layers": rows}, indent=2) + "\n")
