"""Calibration statistics of a model: per layer and per task, the Gram ``Σ_t x_t x_tᵀ`` of
the layer's inputs over a few unlabeled rows (what the regression merges solve with).

The statistics come from forward passes of the frozen model with hooks
(:mod:`eigenmix.compose.hooks`): at each target linear the hook adds the layer's update in
factored form (``x R Lᵀ``) and, where the layer is recorded, adds the masked ``xᵀx`` of the
batch (padding left out; computed in the model's dtype, accumulated in float64). No
activation is kept: per layer one ``n × n`` accumulator (q, k and v read the same input and
share one product). A layer with more than ``sketch_above`` inputs keeps ``Bᵀ G B`` in the
orthonormal basis ``B`` of the modules' row spaces instead (``R × R``, R ≤ Σ r_k), with the
full Gram's diagonal (``n``) for RegMean's shrinkage.

- :func:`gram_statistics`: each task's rows through the base model with its own module
  applied (RegMean's inputs) — fixed :class:`~eigenmix.merging.statistics.Grams`.
- :class:`OwnGrams`: the same inputs, block by block (one block's Grams held at a time: what
  ``eigenmix merge`` uses, whatever the model's depth).
- :class:`MergedGrams`: RegMean++'s inputs, block by block: each task's rows through the
  merged earlier blocks (at scale 1) and its own module's current block; the pass stops
  after that block.

``batches`` are any re-iterable of batches (a list, a DataLoader) per module: dicts of
tensors the model takes as keyword arguments (text or images); the input kind's mask
(:func:`eigenmix.inputs.row_mask`) says which tokens are padding (without one every
position counts).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from eigenmix.compose.hooks import StopPass, on_output, stop_after
from eigenmix.compose.sites import site_at
from eigenmix.errors import InvalidInputError
from eigenmix.inputs import row_mask
from eigenmix.merging.statistics import Grams, Kind, LayerGrams
from eigenmix.modules import Module, factor_pair, matrix_view, tensor_kind
from eigenmix.spectral import default_rtol, orthonormal_range

Batches = Iterable[Mapping[str, Tensor]]


class _Recorder:
    """Per layer, the summed masked ``xᵀx`` (float64) and the token count of one task."""

    def __init__(self, bases: Mapping[str, Tensor]) -> None:
        self.bases = bases
        self.grams: dict[str, Tensor] = {}
        self.diagonals: dict[str, Tensor] = {}  # sketched layers: the full Gram's diagonal (n,)
        self.tokens: dict[str, int] = {}
        self.mask: Tensor | None = None
        self._last: tuple[Tensor, Tensor | None, Tensor, Tensor | None, int] | None = None  # one input held at a time

    def batch(self, mask: Tensor | None) -> None:
        self.mask, self._last = mask, None

    def add(self, layer: str, x: Tensor) -> None:
        basis = self.bases.get(layer)
        last = self._last
        if last is None or last[0] is not x or last[1] is not basis:  # q, k and v read the same tensor in a row: one product
            rows = x.reshape(-1, x.shape[-1])
            if self.mask is not None and self.mask.numel() == rows.shape[0]:
                rows = rows[self.mask.reshape(-1).bool()]
            diagonal = None
            if basis is not None:
                diagonal = rows.to(torch.float64).square().sum(0)
                rows = rows @ basis.to(rows.dtype)
            last = self._last = (x, basis, (rows.T @ rows).to(torch.float64), diagonal, int(rows.shape[0]))
        _, _, gram, diagonal, count = last
        if diagonal is not None:
            self.diagonals[layer] = self.diagonals[layer] + diagonal if layer in self.diagonals else diagonal.clone()
        self.grams[layer] = self.grams[layer] + gram if layer in self.grams else gram.clone()
        self.tokens[layer] = self.tokens.get(layer, 0) + count


def _matrix_layers(modules: Sequence[Module]) -> dict[str, tuple[int, int]]:
    shapes: dict[str, tuple[int, int]] = {}
    for m in modules:
        for name, shape in m.shapes().items():
            if tensor_kind(shape) != "vector":  # a matrix, or a conv kernel's matrix view
                shapes.setdefault(name, matrix_view(shape))
    return shapes


def _sketch_bases(modules: Sequence[Module], shapes: Mapping[str, tuple[int, int]], sketch_above: int | None) -> dict[str, Tensor]:
    """The orthonormal row-space basis of every layer wider than ``sketch_above`` inputs."""
    if sketch_above is None:
        return {}
    out = {}
    for name, (_, n) in shapes.items():
        if n > sketch_above:
            rows = [factor_pair(m.layers[name])[1] for m in modules if name in m.layers]
            out[name] = orthonormal_range(torch.cat(rows, dim=1), default_rtol(rows[0].dtype))
    return out


def _run(
    model: nn.Module,
    apply: Mapping[str, tuple[Tensor, Tensor]],
    record: Iterable[str],
    shapes: Mapping[str, tuple[int, int]],
    recorder: _Recorder,
    batches: Batches,
    last: str | None = None,
) -> None:
    """Forward passes over ``batches`` with ``x R Lᵀ`` added at the layers of ``apply`` and
    the inputs of ``record`` recorded; each pass stops after the module ``last``."""
    recorded = set(record)
    handles = []

    def hook(layer: str) -> Any:
        factors = apply.get(layer)

        def change(x: Tensor, y: Tensor) -> Tensor:
            if layer in recorded:
                recorder.add(layer, x)
            if factors is not None:
                L, R = factors
                y = y + (x @ R.to(x.dtype)) @ L.T.to(x.dtype)
            return y

        return change

    try:
        for layer in set(apply) | recorded:
            handles.append(on_output(model, layer, shapes[layer], hook(layer)))
        if last is not None:
            handles.append(stop_after(model, last))
        with torch.no_grad():
            for batch in batches:
                if not isinstance(batch, Mapping) or not all(isinstance(v, Tensor) for v in batch.values()):
                    got = type(batch).__name__
                    raise InvalidInputError(f"a calibration batch must be a dict of tensors (the model's keyword inputs); got {got}")
                recorder.batch(row_mask(batch))
                with contextlib.suppress(StopPass):
                    try:
                        model(**batch)
                    except (RuntimeError, ValueError, TypeError, IndexError) as err:
                        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                        raise InvalidInputError(f"the model could not run a calibration batch: {first}") from err
    finally:
        for handle in handles:
            handle.remove()


def _check(model: nn.Module, modules: Sequence[Module], batches: Sequence[Batches] | Mapping[str, Batches]) -> list[Batches]:
    if isinstance(batches, Mapping):
        missing = [m.name for m in modules if m.name not in batches]
        if missing:
            raise InvalidInputError(f"no calibration rows for module '{missing[0]}'")
        batches = [batches[m.name] for m in modules]
    if len(batches) != len(modules):
        raise InvalidInputError(f"calibration rows for {len(batches)} modules; the merge has {len(modules)}")
    for name, shape in _matrix_layers(modules).items():
        site_at(model, name, shape)
    return list(batches)


def gram_statistics(
    model: nn.Module,
    modules: Sequence[Module],
    batches: Sequence[Batches] | Mapping[str, Batches],
    *,
    sketch_above: int | None = None,
) -> Grams:
    """Each module's task: its rows through ``model`` with the module applied; the Gram of
    every merged layer's input (also at layers the module lacks: they enter the summed Gram),
    all layers in one pass and kept (:class:`OwnGrams` holds one block at a time instead).

    Args:
        model: the base model the modules adapt (frozen; its layers named as the modules').
        modules: the K modules to be merged.
        batches: per module (in order, or by name), its task's tokenised batches.
        sketch_above: layers with more inputs keep their Grams in the modules' row space.
    """
    source = OwnGrams(model, modules, batches, sketch_above=sketch_above, memory=math.inf)
    if not source.shapes:
        raise InvalidInputError("the modules have no matrix layer to take statistics of")
    source._compute("")  # one pass over every layer
    recorders = source.recorders
    return Grams([r.grams for r in recorders], [r.tokens for r in recorders], source.bases, diagonals=[r.diagonals for r in recorders])


def block_of(layer: str) -> str:
    """A layer's block: its name up to its first numeric part (``encoder.layer.3``), or
    the layer itself where the name has none."""
    match = re.match(r"^(.*?\.\d+)(\.|$)", layer)
    return match.group(1) if match else layer


class BlockGrams(ABC):
    """Statistics computed block by block as the merge proceeds (a
    :class:`~eigenmix.merging.statistics.GramSource`): the Grams of a block are taken when
    its first layer is merged, from every task's rows, and only one block's are held — the
    memory of a calibrated merge is one block's Grams, whatever the depth of the model.
    Each pass stops after the block. Arguments as for :func:`gram_statistics`; the engine
    merges the layers in the model's order. ``seconds``: the time the passes took.
    ``memory``: statistics that do not follow the merge are taken in one pass where all of
    them fit in that many bytes.

    Subclasses say what the earlier blocks run with: :class:`OwnGrams` (each task's own
    module: RegMean's inputs, those of :func:`gram_statistics`) or :class:`MergedGrams`
    (the merge so far, at scale 1: RegMean++'s)."""

    kind: Kind

    def __init__(
        self,
        model: nn.Module,
        modules: Sequence[Module],
        batches: Sequence[Batches] | Mapping[str, Batches],
        *,
        sketch_above: int | None = None,
        memory: float = 2e9,
    ) -> None:
        self.batches = [list(b) for b in _check(model, modules, batches)]  # re-iterated once per block
        self.model, self.modules = model, list(modules)
        self.n_modules = len(modules)
        self.shapes = _matrix_layers(modules)
        self.bases = _sketch_bases(modules, self.shapes, sketch_above)
        self.position = {name: i for i, (name, _) in enumerate(model.named_modules())}
        dims = [self.bases[n].shape[1] if n in self.bases else shape[1] for n, shape in self.shapes.items()]
        self.whole = self.kind == "own" and 8 * len(modules) * sum(d * d for d in dims) <= memory
        self.reset()

    def block(self, name: str) -> str:
        """The block whose statistics hold ``name``'s ("" for all layers in one pass)."""
        return "" if self.whole else block_of(name)

    def reset(self) -> None:
        self.seconds = 0.0
        self._merged: dict[str, tuple[Tensor, Tensor]] = {}
        self._block: str | None = None
        self.recorders: list[_Recorder] = []  # the current block's statistics, one per task

    def order(self, layers: Sequence[str]) -> list[str]:
        return sorted(layers, key=lambda name: self.position.get(name, len(self.position)))

    @abstractmethod
    def merged(self, name: str, delta: object) -> None:
        """Told each merged layer (at scale 1)."""

    @abstractmethod
    def earlier(self, k: int, names: Sequence[str]) -> dict[str, tuple[Tensor, Tensor]]:
        """What the layers before the current block add for task k."""

    def layer(self, name: str, members: Sequence[int]) -> LayerGrams:
        block = self.block(name)
        if block != self._block:
            self._compute(block)
        if any(name not in r.grams for r in self.recorders):
            raise InvalidInputError(f"layer '{name}' saw no input in the calibration passes (the model does not run it)")
        pairs = [(k, r.grams[name], r.tokens[name]) for k, r in enumerate(self.recorders)]
        diagonals = [r.diagonals[name] for r in self.recorders] if name in self.bases else None
        if diagonals is not None:
            diagonals = [diagonals[k] for k in members] + [d for k, d in enumerate(diagonals) if k not in members]
        return LayerGrams(
            [pairs[k][1] for k in members], [pairs[k][2] for k in members],
            [p for p in pairs if p[0] not in members], self.bases.get(name), diagonals,
        )  # fmt: skip

    def _compute(self, block: str) -> None:
        inside = [name for name in self.shapes if self.block(name) == block]
        first = min(self.position.get(name, 0) for name in inside)
        before = [name for name in self.shapes if self.position.get(name, 0) < first]
        try:  # nothing after the block is needed
            stop: str | None = block if block and self.model.get_submodule(block) is not None else None
        except AttributeError:
            stop = None
        self.recorders = []
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            for k, (module, rows) in enumerate(zip(self.modules, self.batches, strict=True)):
                recorder = _Recorder(self.bases)
                own = {name: factor_pair(module.layers[name]) for name in inside if name in module.layers}
                _run(self.model, {**self.earlier(k, before), **own}, inside, self.shapes, recorder, rows, stop)
                if not recorder.tokens:
                    raise InvalidInputError(f"module '{module.name}': its calibration rows are empty")
                self.recorders.append(recorder)
        finally:
            self.model.train(was_training)
        self._block = block
        self.seconds += time.perf_counter() - start


class OwnGrams(BlockGrams):
    """Each task's rows through the base model with its own module applied (RegMean's
    inputs): the Grams of :func:`gram_statistics`. In one pass where every layer's Grams
    fit in ``memory`` bytes (default 2 GB), else block by block, one block held at a time."""

    kind: Kind = "own"

    def merged(self, name: str, delta: object) -> None:
        """Each model's own inputs do not follow the merge."""

    def earlier(self, k: int, names: Sequence[str]) -> dict[str, tuple[Tensor, Tensor]]:
        module = self.modules[k]
        return {name: factor_pair(module.layers[name]) for name in names if name in module.layers}


class MergedGrams(BlockGrams):
    """RegMean++'s statistics: each task's rows through the merged earlier blocks (at scale
    1, as the engine reports them) and its own module's current block."""

    kind: Kind = "merged"

    def merged(self, name: str, delta: object) -> None:
        self._merged[name] = factor_pair(delta)  # type: ignore[arg-type]

    def earlier(self, k: int, names: Sequence[str]) -> dict[str, tuple[Tensor, Tensor]]:
        missing = [name for name in names if name not in self._merged]
        if missing:
            raise InvalidInputError(f"layer '{missing[0]}' precedes '{self._next}' but is not merged yet (merge in the model's order)")
        return {name: self._merged[name] for name in names}

    def _compute(self, block: str) -> None:
        self._next = block
        super()._compute(block)
