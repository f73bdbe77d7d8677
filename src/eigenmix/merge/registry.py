"""One registry of merge methods: ``@register(...)`` rejects duplicate names, and a
method name is checked against it before any work starts.

Two kinds of method:

- ``spectral``: basis-invariant; runs on the joint-basis decomposition of a layer
  (:class:`eigenmix.merge.layer.LayerSpectra`) and never forms an ``m × n`` matrix.
- ``elementwise``: acts on individual weight entries (trim, drop, elect sign), which
  depends on the coordinate basis; forms the dense deltas of one layer at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from eigenmix.errors import InvalidInputError

Kind = Literal["spectral", "elementwise"]


class MergeParams(BaseModel):
    """Parameters every method has. Subclass per method; help text is written once here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale: float = Field(1.0, description="global scaling of the merged delta (α / λ of the papers)")


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    Attributes:
        name: registry key, used in configs and on the command line.
        fn: the per-layer function (signature depends on ``kind``).
        params: the pydantic model of its parameters, with the paper's defaults.
        kind: ``"spectral"`` or ``"elementwise"``.
        description: one line.
        paper: title, authors, venue.
        url: link to the paper.
    """

    name: str
    fn: Callable[..., Any]
    params: type[MergeParams]
    kind: Kind
    description: str
    paper: str
    url: str

    def parse_params(self, raw: dict[str, Any] | None) -> MergeParams:
        """Validate user parameters against this method's model (one-line errors)."""
        from pydantic import ValidationError

        try:
            return self.params.model_validate(raw or {})
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "parameters"
            if first["type"] == "extra_forbidden":
                known = ", ".join(self.params.model_fields)
                raise InvalidInputError(f"method '{self.name}' has no parameter '{where}' (it has: {known})") from None
            raise InvalidInputError(f"method '{self.name}', parameter '{where}': {first['msg']}") from None


_REGISTRY: dict[str, MergeMethod] = {}


def register(
    name: str, *, params: type[MergeParams], kind: Kind, description: str, paper: str, url: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class-free registration of a per-layer merge function under ``name``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"merge method '{name}' is already registered")
        _REGISTRY[name] = MergeMethod(name, fn, params, kind, description, paper, url)
        return fn

    return decorate


def get_method(name: str) -> MergeMethod:
    """The method registered as ``name``; :class:`InvalidInputError` lists the known ones."""
    _load_builtin_methods()
    if name not in _REGISTRY:
        raise InvalidInputError(f"unknown merge method '{name}' (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def all_methods() -> list[MergeMethod]:
    """Every registered method, sorted by name."""
    _load_builtin_methods()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def _load_builtin_methods() -> None:
    import eigenmix.merge.methods  # noqa: F401 - importing registers the built-in methods
