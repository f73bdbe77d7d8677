"""Write a merged module: as a PEFT LoRA adapter (exact rank, or truncated with the
retained energy reported per layer), or as a full model (base + merged delta) in the
base model's own safetensors layout. Non-delta tensors of the inputs (classifier heads)
are written per task beside the output, never dropped."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from eigenmix.errors import InvalidInputError
from eigenmix.io.peft_config import CONFIG_NAME
from eigenmix.io.peft_lora import PREFIX, WEIGHTS_NAME, lora_config
from eigenmix.io.safetensors_io import CheckpointReader
from eigenmix.io.stream_writer import StreamWriter
from eigenmix.modules import AnyDelta, DenseDelta, Module, SpectralDelta
from eigenmix.spectral import default_rtol, numerical_rank, retained_energy

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


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
        zero = SpectralDelta(spec.U.new_zeros(m, 1), spec.U.new_zeros(1), spec.U.new_zeros(n, 1))
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
) -> list[LayerOutput]:
    """Write merged layers as a PEFT LoRA adapter into ``folder`` as they arrive.

    Each layer is cut to ``rank`` (or kept at its exact rank), written as balanced
    factors, and dropped, so memory holds one layer of output at a time.

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
            writer.add(f"{PREFIX}{name}.lora_A.weight", low.A)
            writer.add(f"{PREFIX}{name}.lora_B.weight", low.B)
            ranks[name] = (low.rank, low.scale)
            report.append(row)
    config = lora_config(ranks, fan_in_fan_out=fan_in_fan_out, base_model=base_model)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return report


def find_base_tensor(layer: str, names: set[str], by_suffix: dict[str, str]) -> str | None:
    """The base tensor a layer updates: ``{layer}.weight`` (adapters) or ``{layer}`` (task
    vectors), allowing one leading component of difference (``bert.encoder.…`` vs
    ``encoder.…``)."""
    for candidate in (f"{layer}.weight", layer):
        if candidate in names:
            return candidate
        if "." in candidate and candidate.split(".", 1)[1] in names:
            return candidate.split(".", 1)[1]
        if candidate in by_suffix:
            return by_suffix[candidate]
    return None


def base_tensor_names(module: Module, reader: CheckpointReader) -> dict[str, str]:
    """Map every layer of ``module`` to the base checkpoint tensor it updates (checked)."""
    names = set(reader.keys())
    by_suffix = {n.split(".", 1)[1]: n for n in names if "." in n}
    out = {}
    for layer, delta in module.layers.items():
        target = find_base_tensor(layer, names, by_suffix)
        if target is None:
            raise InvalidInputError(f"{reader.path}: the base model has no tensor for layer '{layer}'")
        if reader.shape(target) not in (tuple(delta.shape), tuple(delta.shape)[::-1]):
            raise InvalidInputError(
                f"{reader.path}: tensor '{target}' has shape {reader.shape(target)} but the merged layer '{layer}' has {tuple(delta.shape)}"
            )
        out[layer] = target
    return out


def write_full_model(module: Module, base: Path, folder: Path) -> list[LayerOutput]:
    """Write ``W_base + ΔW`` for every merged layer, every other base tensor unchanged, in
    one ``model.safetensors``; non-weight files of a base folder (config, tokenizer) are
    copied, so the result loads like the base model."""
    fan_in_fan_out = module.fan_in_fan_out
    with CheckpointReader(base) as reader:
        targets = base_tensor_names(module, reader)
        by_tensor = {t: layer for layer, t in targets.items()}
        tensors = {}
        for name in reader.keys():  # noqa: SIM118
            W = reader.get(name)
            if name in by_tensor:
                delta = module.layers[by_tensor[name]].dense().to(torch.float32)
                if fan_in_fan_out and delta.ndim == 2 and delta.shape != W.shape:
                    delta = delta.T
                W = (W.to(torch.float32) + delta).to(W.dtype)
            tensors[name] = W.contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if base.is_dir():  # the config, tokenizer and config-only folders (sentence-transformers' 1_Pooling/) come along
        for item in base.iterdir():
            if item.is_file() and not item.name.endswith(WEIGHT_FILES) and item.name != "model.safetensors.index.json":
                shutil.copy2(item, folder / item.name)
            elif item.is_dir() and not item.name.startswith(".") and not any(p.name.endswith(WEIGHT_FILES) for p in item.rglob("*")):
                shutil.copytree(item, folder / item.name)
    write_extras(module.extras, folder)
    return [LayerOutput(layer, min(module.layers[layer].shape), 1.0, min(module.layers[layer].shape)) for layer in targets]


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
