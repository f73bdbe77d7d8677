"""One registry of routers, as :mod:`eigenmix.merging.registry` is of merge methods:
``@register(...)`` rejects duplicate names, and a router's name is checked against it (one
line, with the choices and a did-you-mean) before any work starts.

Each router's file registers it with its parameters (a :class:`RouterParams` model: the
defaults ``eigenmix route`` and ``eigenmix explain`` use, and the help text, written once),
a one-line description, its paper and a factory. The factory builds the router from

- the library,
- the base model it routes (an ``nn.Module``: the backbone's model — the backbone itself,
  with its input kind and tokeniser, belongs to ``harness/``, which this layer may not
  import),
- the parsed parameters,
- ``stream``: the batches that are about to be routed, for a router that takes statistics
  from them (the spectral router's ``calibration: stream``), or None.

Everything else a factory needs it reads from the library through :mod:`eigenmix.compose`
(the statistics and pooled rows the modules keep, :mod:`eigenmix.compose.router_stats`), so the
whole of building a router lives here, below ``harness/``; ``harness/library_run.make_router``
only hands over the backbone's model and the rows' batches.

:class:`~eigenmix.compose.routers.GivenRouter` is not registered: its coefficients come with
each forward call (``given=``), so no name builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from eigenmix.compose.library import Library
from eigenmix.compose.routing import Router
from eigenmix.errors import InvalidInputError, did_you_mean

DEFAULT = "spectral"  # the router of `eigenmix route` and `eigenmix explain` when none is named
Stream = Callable[[], Iterable[dict[str, Tensor]]]  # the routed rows' batches (the model's keyword tensors), read anew per call
Factory = Callable[[Library, nn.Module, Any, Stream | None], Router]


class RouterParams(BaseModel):
    """A router's settings. Subclass per router; help text is written once, in ``Field``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class RouterEntry:
    """A registered router.

    Attributes:
        name: registry key, used on the command line (``--router``).
        router: the class the factory builds.
        params: the pydantic model of its settings, with their defaults and descriptions.
        factory: ``factory(library, model, params, stream) → router``.
        description: one line.
        paper: title, authors, venue (eigenmix's own where it has none).
        url: link to the paper (None for eigenmix's own).
    """

    name: str
    router: type
    params: type[RouterParams]
    factory: Factory
    description: str
    paper: str
    url: str | None

    def defaults(self) -> dict[str, Any]:
        """Every setting at its registered default."""
        return self.params().model_dump()

    def parse_params(self, raw: Mapping[str, Any] | None) -> RouterParams:
        """Validate settings against this router's model (one line for all problems)."""
        try:
            return self.params.model_validate(dict(raw or {}))
        except ValidationError as err:
            problems = []
            for e in err.errors():
                where = ".".join(str(p) for p in e["loc"]) or "settings"
                if e["type"] == "extra_forbidden":
                    problems.append(f"router '{self.name}' has no setting '{where}'{did_you_mean(where, self.params.model_fields)}")
                else:
                    problems.append(f"router '{self.name}', setting '{where}': {e['msg']}")
            known = ", ".join(self.params.model_fields) or "none"
            raise InvalidInputError("; ".join(problems) + f" (its settings: {known})") from None

    def build(
        self, library: Library, model: nn.Module, params: RouterParams | Mapping[str, Any] | None = None, *, stream: Stream | None = None
    ) -> Router:
        """The router on ``library`` and ``model`` (settings unset: the registered defaults)."""
        parsed = params if isinstance(params, RouterParams) else self.parse_params(params)
        return self.factory(library, model, parsed, stream)


_REGISTRY: dict[str, RouterEntry] = {}


def register(
    name: str, *, router: type, params: type[RouterParams], description: str, paper: str, url: str | None
) -> Callable[[Factory], Factory]:
    """Register ``factory`` as the router ``name`` (a name registered twice is an error)."""

    def decorate(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"router '{name}' is already registered")
        _REGISTRY[name] = RouterEntry(name, router, params, factory, description, paper, url)
        return factory

    return decorate


def router_names() -> tuple[str, ...]:
    """The registered names: the default first, then the others by name."""
    return tuple(sorted(_REGISTRY, key=lambda n: (n != DEFAULT, n)))


def get_router(name: str) -> RouterEntry:
    """The router registered as ``name``; :class:`InvalidInputError` lists the choices.
    (Importing :mod:`eigenmix.compose.routers` registers the built-in routers.)"""
    if name not in _REGISTRY:
        raise InvalidInputError(f"unknown router '{name}'{did_you_mean(name, _REGISTRY)} (choose from {', '.join(router_names())})")
    return _REGISTRY[name]


def all_routers() -> list[RouterEntry]:
    """Every registered router, sorted by name (for a generated reference: each entry's
    ``name``, ``description``, ``paper``, ``url``, and ``params.model_fields``: per setting
    its ``annotation``, ``default`` and ``description``)."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
