"""A library of named modules of one base model, each kept per layer in its exact spectral
form ``ΔW_k = U_k diag(σ_k) V_kᵀ``.

Modules are added and removed one at a time, and each costs only its own work: ``add``
takes the module's own (factored) SVD per layer, ``remove`` drops it; nothing is recomputed
over the others, and the others' tensors are never touched, so their outputs stay
bit-identical. There is no joint basis to rebuild: a router scores module k on an input x
from ``V_kᵀ x`` (design note 5) and a composition applies ``U_k diag(σ_k) V_kᵀ x`` per module.

On disk (:func:`save_library`, :func:`load_library`): ``library.json`` (format, base model,
the modules in order) and ``modules/<name>.safetensors`` (per layer ``<layer>.U``, ``.S``,
``.V``), written atomically.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from eigenmix.errors import InvalidInputError, ShapeMismatchError
from eigenmix.modules import AnyDelta, DenseDelta, Module, delta_dtype, matrix_view, tensor_kind
from eigenmix.spectral import SVD, default_rtol, numerical_rank

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def spectral_layer(delta: AnyDelta) -> SVD:
    """One delta's exact SVD (float64 maths, factored for low-rank deltas), cut to its
    numerical rank and stored in its own float dtype (float32 for half precision)."""
    if isinstance(delta, DenseDelta) and not delta.is_matrix:
        raise InvalidInputError(f"a {delta.W.ndim}-D delta (a bias or norm) cannot be composed; a library holds matrix layers")
    f = delta.svd64()
    f = f.truncate(max(numerical_rank(f.S, default_rtol(delta_dtype(delta))), 1))
    dtype = delta_dtype(delta) if delta_dtype(delta) in (torch.float32, torch.float64) else torch.float32
    return SVD(f.U.to(dtype).contiguous(), f.S.to(dtype).contiguous(), f.V.to(dtype).contiguous())


@dataclass(frozen=True)
class Entry:
    """One module of a library.

    Attributes:
        name: its name in the library (letters, digits, ``_.+-``).
        layers: layer name → its spectral form (``U`` (m, r), ``S`` (r,), ``V`` (n, r)).
        source: where it was read from.
        stats: optional per-layer statistics a router keeps beside it (e.g. the module's mean
            response on a few unlabeled rows of its own task), ``<layer>.<stat>`` → tensor.
        head: an optional classification head of its task (``weight`` (classes, hidden),
            ``bias`` (classes,)), as ``eigenmix.train`` saves beside an adapter.
        labels: the head's class names.
    """

    name: str
    layers: Mapping[str, SVD]
    source: str | None = None
    stats: Mapping[str, Tensor] = field(default_factory=dict)
    head: Mapping[str, Tensor] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {layer: (int(f.U.shape[0]), int(f.V.shape[0])) for layer, f in self.layers.items()}


@dataclass(frozen=True)
class LayerView:
    """The library's modules at one layer, in library order.

    Attributes:
        members: the library index of each module that has this layer.
        U, S, V: their spectral forms, in the same order.
    """

    members: tuple[int, ...]
    U: tuple[Tensor, ...]
    S: tuple[Tensor, ...]
    V: tuple[Tensor, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.U[0].shape[0]), int(self.V[0].shape[0])

    @cached_property
    def stacked(self) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
        """``(U_cat (m, Σr), S_cat (Σr,), V_cat (n, Σr), ranks)``: every module's factors side
        by side (formed once per view), for the products that serve all modules at once."""
        return torch.cat(self.U, 1), torch.cat(self.S), torch.cat(self.V, 1), tuple(int(s.shape[0]) for s in self.S)

    @cached_property
    def dense(self) -> Tensor:
        """``(K, m, n)``: every module's ``U diag(σ) Vᵀ``, formed once per view when first
        asked (by the routed forward, for modules whose factors cost more than the matrix)."""
        return torch.stack([(U * S) @ V.T for U, S, V in zip(self.U, self.S, self.V, strict=True)])

    @cached_property
    def batched(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(U (K, m, r), S (K, r), V (K, n, r))`` when every module has the same rank (else
        None), for one batched product in which each row uses its own module."""
        if len({int(s.shape[0]) for s in self.S}) != 1:
            return None
        return torch.stack(self.U), torch.stack(self.S), torch.stack(self.V)


class Library:
    """Named modules of one base model, each kept per layer in its spectral form.

    Args:
        base_model: the base model's id or path (modules recording another are refused).
    """

    def __init__(self, base_model: str | None = None) -> None:
        self.base_model = base_model
        self._entries: list[Entry] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def __contains__(self, name: object) -> bool:
        return any(e.name == name for e in self._entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self._entries)

    def entry(self, name: str) -> Entry:
        for e in self._entries:
            if e.name == name:
                return e
        raise InvalidInputError(f"the library has no module '{name}' (it has: {', '.join(self.names) or 'none'})")

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Layer name → ``(m, n)`` over every module."""
        out: dict[str, tuple[int, int]] = {}
        for e in self._entries:
            out.update(e.shapes)
        return out

    @property
    def layers(self) -> list[str]:
        """Every layer some module has, in first-seen order."""
        return list(dict.fromkeys(layer for e in self._entries for layer in e.layers))

    def view(self, layer: str) -> LayerView:
        """The modules that have ``layer``, in library order."""
        members = [(i, e.layers[layer]) for i, e in enumerate(self._entries) if layer in e.layers]
        if not members:
            raise InvalidInputError(f"no module of the library has layer '{layer}'")
        return LayerView(
            tuple(i for i, _ in members), tuple(f.U for _, f in members), tuple(f.S for _, f in members), tuple(f.V for _, f in members)
        )

    def add(
        self,
        module: Module,
        name: str | None = None,
        stats: Mapping[str, Tensor] | None = None,
        head: Mapping[str, Tensor] | None = None,
        labels: tuple[str, ...] | None = None,
    ) -> Entry:
        """Add one module (its own SVD per layer; the others are not touched).

        Raises:
            InvalidInputError: a bad or duplicate name, another base model, a non-matrix layer.
            ShapeMismatchError: a layer whose shape differs from the library's.
        """
        name = name or module.name
        self.check_name(name)
        if module.base_model and self.base_model and module.base_model != self.base_model:
            raise InvalidInputError(f"module '{name}' is for base model {module.base_model}, the library for {self.base_model}")
        known = self.shapes()
        for layer, stored in module.shapes().items():
            shape = matrix_view(stored) if tensor_kind(stored) != "vector" else tuple(stored)  # a conv kernel as its matrix view
            if layer in known and tuple(shape) != known[layer]:
                raise ShapeMismatchError(f"module '{name}': layer '{layer}' has shape {tuple(shape)}, the library's has {known[layer]}")
        layers = {layer: spectral_layer(delta) for layer, delta in module.layers.items()}
        entry = Entry(name, layers, module.source, dict(stats or {}), dict(head or {}), labels)
        return self.add_entry(entry, module.base_model)

    def add_entry(self, entry: Entry, base_model: str | None = None) -> Entry:
        """Add an already decomposed module (as :func:`load_library` reads them)."""
        self.check_name(entry.name)
        if not entry.layers:
            raise InvalidInputError(f"module '{entry.name}' has no layers")
        self._entries.append(entry)
        if self.base_model is None:
            self.base_model = base_model
        return entry

    def check_name(self, name: str) -> None:
        if not NAME.match(name):
            raise InvalidInputError(f"module name '{name}': use letters, digits and _.+- (starting with a letter or digit)")
        if name in self:
            raise InvalidInputError(f"the library already has a module named '{name}'")

    def remove(self, name: str) -> Entry:
        """Remove one module (the others are not touched); the removed entry is returned."""
        entry = self.entry(name)
        self._entries.remove(entry)
        return entry

    def replace(self, entry: Entry) -> None:
        """Put ``entry`` in the place of the module of the same name (same layers and shapes:
        its statistics or head changed)."""
        old = self.entry(entry.name)
        if entry.shapes != old.shapes:
            raise ShapeMismatchError(f"module '{entry.name}': a replacement must have the same layers and shapes")
        self._entries[self._entries.index(old)] = entry

    def delta(self, name: str, layer: str) -> Tensor:
        """Module ``name``'s dense ``ΔW`` of ``layer`` (for tests and small layers)."""
        f = self.entry(name).layers[layer]
        return (f.U * f.S) @ f.V.T
