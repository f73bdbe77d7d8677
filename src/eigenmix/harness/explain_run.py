"""What ``eigenmix explain`` does with text: the target read from its folder (a library, a
merged or tuned adapter with the modules its report names, or one adapter), the base model
loaded offline, the rows run once with the attribution recorded, and the
:class:`~eigenmix.explain.Explanation` built."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eigenmix.compose import Library, RoutedModel, Router, load_library
from eigenmix.compose.sites import site_at
from eigenmix.data.images import ImageRow
from eigenmix.data.inputs import InputRow
from eigenmix.errors import InvalidInputError
from eigenmix.explain import RESIDUAL, Explanation, LayerDirections, Recorder, Row, from_library, from_merge, record_rows
from eigenmix.harness.backbones import IMAGE_SIZE, Backbone
from eigenmix.harness.library_run import add_adapter, load_base
from eigenmix.io import read_lora_adapter
from eigenmix.io.peft_lora import adapter_digest

REPORTS = {"merge_report.json": "merged", "tune_report.json": "tuned"}


@dataclass(frozen=True)
class Target:
    """What is explained: its kind, its modules (as a library), per layer its directions,
    and the part names (the modules, then ``residual`` where a merge has one)."""

    path: Path
    kind: str
    library: Library
    directions: dict[str, LayerDirections]
    parts: tuple[str, ...]


def load_target(path: Path) -> Target:
    """Read ``path``: a library folder (``library.json``), a merged or tuned adapter (PEFT
    files and the ``merge_report.json`` / ``tune_report.json`` that names its modules), or a
    plain PEFT LoRA adapter (one module). One :class:`InvalidInputError` line otherwise."""
    if not path.is_dir():
        raise InvalidInputError(f"{path}: no such folder" if not path.exists() else f"{path}: not a folder")
    if (path / "library.json").is_file():
        library = load_library(path)
        return Target(path, "library", library, from_library(library), library.names)
    if not (path / "adapter_config.json").is_file():
        raise InvalidInputError(
            f"{path}: not an adapter, library or tuned folder (no adapter_config.json or library.json; a merged or tuned output has one)"
        )
    merged = read_lora_adapter(path)
    report = next((name for name in REPORTS if (path / name).is_file()), None)
    if report is None:
        library = Library(merged.base_model)
        add_adapter(library, path, _plain(path.name))
        return Target(path, "adapter", library, from_library(library), library.names)
    library = Library(merged.base_model)
    for name, folder in _report_modules(path / report):
        add_adapter(library, folder, name)
    directions = from_merge(merged.layers, library)
    residual = any(bool((d.owner == len(library)).any()) for d in directions.values())
    return Target(path, REPORTS[report], library, directions, (*library.names, RESIDUAL) if residual else library.names)


def _plain(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_.+-" else "_" for c in name).lstrip("_.+-") or "adapter"


def _report_modules(report: Path) -> list[tuple[str, Path]]:
    """The modules a merge or tune report names: ``(name, folder)`` each, checked to exist."""
    try:
        document = json.loads(report.read_text())
        entries = document["config"]["modules"]
        out = [(str(e.get("name") or e.get("task") or Path(e["path"]).name), Path(e["path"])) for e in entries]
        digests = document.get("module_digests") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidInputError(f"{report}: not a merge or tune report (no config.modules with paths)") from None
    for name, folder in out:
        if not (folder / "adapter_config.json").is_file():
            where = "" if folder.is_absolute() else f" (relative to the folder the merge ran in, not {Path.cwd()})"
            raise InvalidInputError(
                f"{report}: module '{name}' was read from {folder}{where}, which holds no adapter now; explaining needs it"
            )
        recorded = digests.get(name) or digests.get(folder.name)
        if recorded is not None and recorded != adapter_digest(folder):
            raise InvalidInputError(
                f"{report}: module '{name}' at {folder} is not the adapter this output was made from (its weights changed)"
            )
    if RESIDUAL in {name for name, _ in out}:
        raise InvalidInputError(f"{report}: a module named '{RESIDUAL}' would clash with the residual part")
    return [(_plain(name), folder) for name, folder in out]


def routed_gate(routed: RoutedModel, directions: dict[str, LayerDirections]) -> Callable[[str, Tensor], Tensor | None]:
    """Each direction's coefficient from the routed model's last decision at the layer
    (None on a routing model's scoring pass, where nothing is added)."""
    index = {}
    for layer, d in directions.items():
        position = {k: i for i, k in enumerate(routed.views[layer].members)}
        index[layer] = torch.tensor([position[int(k)] for k in d.owner])

    def gate(layer: str, x: Tensor) -> Tensor | None:
        g = routed.last.get(layer)
        return None if g is None else g[..., index[layer]]

    return gate


@torch.no_grad()
def explain_rows(
    target: Target,
    encoder: Backbone,
    rows: Sequence[InputRow | ImageRow],
    *,
    router: Router | None = None,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> Explanation:
    """One pass over ``rows`` with the attribution recorded (a library is routed by
    ``router``; a merged, tuned or single adapter adds its own update)."""
    routed = RoutedModel(encoder.model, target.library, router) if router is not None else None
    gate = routed_gate(routed, target.directions) if routed is not None else None
    per_token = encoder.kind == "text"  # a CNN's layers see different positions: no per-token view across layers
    parts = len(target.parts)
    recorder = Recorder(encoder.model, target.directions, parts, len(rows), apply=routed is None, gate=gate, per_token=per_token)
    batches = encoder.batches(rows, batch_size)
    tokens = encoder.tokens(batches)
    try:
        record_rows(routed or encoder.model, recorder, batches, on_batch)
    finally:
        recorder.close()
        if routed is not None:
            routed.detach_hooks()
    order = [layer for layer, _ in encoder.model.named_modules() if layer in target.directions]
    probe = tuple(
        Row(r.line, r.text, r.group, tokens[i], r.text_pair) if isinstance(r, InputRow) else Row(r.line, f"image {r.line}", r.group, ())
        for i, r in enumerate(rows)
    )
    return Explanation(str(target.path), target.kind, target.parts, tuple(order), target.directions, recorder.tallies,
                       recorder.tokens, probe, extra or {})  # fmt: skip


def base_for(target: Target, base_model: Path | None, max_length: int, image_size: int = IMAGE_SIZE) -> Backbone:
    """The target's base model (or ``base_model``), loaded offline, and checked to have every
    layer the target updates, of the target's shape (one line naming the first that is not)."""
    encoder = load_base(target.library, base_model, max_length, image_size)
    for layer, d in target.directions.items():
        site_at(encoder.model, layer, d.shape)
    return encoder
