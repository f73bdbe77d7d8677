"""The router registry: one entry per router with its defaults, duplicates refused, an
unknown name one line with the choices; ``make_router`` of each name builds that router at
its registered defaults (a setting given replaces its default; one it lacks is ignored)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig

from common import base_model, inputs, make_adapter
from eigenmix.compose import Library
from eigenmix.compose.router_stats import module_statistics, stored_statistics
from eigenmix.compose.routers import ArrowRouter, LearnedRouter, SpectralRouter, UniformRouter
from eigenmix.compose.routers.registry import RouterParams, all_routers, get_router, register, router_names
from eigenmix.errors import InvalidInputError
from eigenmix.harness.library_run import ROUTERS, make_router
from eigenmix.io import read_lora_adapter

DEFAULTS = {
    "arrow": {"top_k": 3, "temperature": 1.0},
    "learned": {"scope": "all", "temperature": 3.0, "top_k": None},
    "spectral": {"calibration": "chance", "temperature": 0.2, "top_k": None, "level": "sequence", "scope": "all"},
    "uniform": {},
}
CLASSES = {"arrow": ArrowRouter, "learned": LearnedRouter, "spectral": SpectralRouter, "uniform": UniformRouter}


@pytest.fixture
def library(tmp_path) -> Library:
    """Three adapters, each keeping its statistics and pooled rows (as ``library add --rows``)."""
    library = Library()
    for i in range(3):
        folder = tmp_path / f"task_{i}"
        make_adapter(folder, LoraConfig(r=2, lora_alpha=2, target_modules=["q", "v", "out"]), seed=30 + i)
        library.add(read_lora_adapter(folder))
    model = base_model().eval()
    for k, name in enumerate(library.names):
        stats = module_statistics(model, library, name, {"x": inputs(n=6 + k) + k})
        library.replace(dataclasses.replace(library.entry(name), stats=stats))
    return library


def encoder():
    return SimpleNamespace(model=base_model().eval())  # make_router reads the backbone's model only


def test_every_router_is_listed_with_its_defaults_paper_and_help():
    entries = all_routers()
    assert [e.name for e in entries] == sorted(DEFAULTS)
    for e in entries:
        assert e.defaults() == DEFAULTS[e.name] and e.router is CLASSES[e.name]
        assert e.description and "\n" not in e.description and e.paper
        assert all(f.description for f in e.params.model_fields.values()), e.name
    assert get_router("arrow").url == "https://arxiv.org/abs/2405.11157" and "Towards Modular LLMs" in get_router("arrow").paper
    assert ROUTERS == router_names() == ("spectral", "arrow", "learned", "uniform")  # the default first, as route lists them


def test_the_classes_defaults_are_the_registered_ones():
    """One place for the defaults: the classes built bare carry them (the learned gate's
    class keeps its own top-1: route's defaults are the registry's)."""
    spectral, arrow = SpectralRouter(), ArrowRouter()
    assert {k: getattr(spectral, k) for k in DEFAULTS["spectral"]} == DEFAULTS["spectral"]
    assert {"top_k": arrow.top_k, "temperature": arrow.temperature} == DEFAULTS["arrow"]


def test_a_name_registered_twice_is_refused():
    class Params(RouterParams):
        pass

    with pytest.raises(ValueError, match="router 'uniform' is already registered"):
        register("uniform", router=UniformRouter, params=Params, description="again", paper="-", url=None)(lambda *a: UniformRouter())
    assert get_router("uniform").params is not Params


def test_an_unknown_router_is_one_line_with_the_choices(library):
    with pytest.raises(InvalidInputError) as err:
        make_router("spectal", library, encoder())  # type: ignore[arg-type]
    assert str(err.value) == "unknown router 'spectal' (did you mean 'spectral'?) (choose from spectral, arrow, learned, uniform)"
    with pytest.raises(InvalidInputError, match=r"^unknown router 'moe' \(choose from spectral, arrow, learned, uniform\)$"):
        get_router("moe")


def test_bad_settings_are_one_line():
    with pytest.raises(InvalidInputError, match=r"router 'spectral', setting 'temperature'.*\(its settings: calibration, temperature"):
        get_router("spectral").parse_params({"temperature": 0.0})
    with pytest.raises(InvalidInputError, match="router 'arrow' has no setting 'topk' \\(did you mean 'top_k'\\?\\)"):
        get_router("arrow").parse_params({"topk": 2})


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_make_router_builds_each_router_at_its_registered_defaults(library, name):
    router = make_router(name, library, encoder())  # type: ignore[arg-type]
    assert type(router) is CLASSES[name]
    got = {k: getattr(router, k) for k in DEFAULTS[name] if k not in ("calibration", "scope")}
    assert got == {k: v for k, v in DEFAULTS[name].items() if k not in ("calibration", "scope")}
    if name == "spectral":
        assert (router.calibration, router.scope, router.score) == ("chance", "all", "energy")
    if name == "learned":
        assert router.gate.layers == tuple(library.layers) and router.scope == "all"  # a gate of every layer


def test_make_router_takes_the_settings_given_and_ignores_those_a_router_lacks(library):
    arrow = make_router("arrow", library, encoder(), temperature=2.0, level="token", calibration="stats")  # type: ignore[arg-type]
    assert (arrow.top_k, arrow.temperature) == (3, 2.0)
    first = make_router("learned", library, encoder(), scope="first", top_k=1)  # type: ignore[arg-type]
    assert first.gate.layers is None and first.scope == "first" and first.top_k == 1
    stats = make_router("spectral", library, encoder(), calibration="stats", scope="layer")  # type: ignore[arg-type]
    assert (stats.calibration, stats.scope, stats.temperature) == ("stats", "layer", 0.2)
    for layer, (mean, std) in stored_statistics(library).items():
        assert torch.equal(stats.stats[layer][0], mean) and torch.equal(stats.stats[layer][1], std)
    stream = make_router("spectral", library, encoder(), calibration="stream", stream=lambda: [{"x": inputs(n=8)}])  # type: ignore[arg-type]
    assert stream.calibration == "stats" and set(stream.stats) == set(library.layers)
    with pytest.raises(InvalidInputError, match="calibration 'stream' needs the rows being routed"):
        make_router("spectral", library, encoder(), calibration="stream")  # type: ignore[arg-type]
