"""Parity with the papers' own code, on the fixed inputs of tests/fixtures/reference_merges.json.

The fixture was made by running the authors' reference implementations (TSV-M:
AntoAndGar/task_singular_vectors; Iso-C/-CTS: danielm1405/iso-merging; KnOTS:
gstoica27/KnOTS; TIES: prateeky2806/ties-merging; STAR: IBM/STAR; commits and settings in
its ``provenance``) on three tasks' task vectors of two matrices and a bias, with every
global scale at 1. None of their code is in eigenmix; these tests check the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import eigenmix
from eigenmix.merging.methods import knots as knots_module
from eigenmix.modules import DenseDelta, Module

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "reference_merges.json").read_text())
TASKS = sorted(FIXTURE["inputs"])


def task_modules(names: tuple[str, ...] = ("layer1.weight", "layer2.weight", "layer1.bias")) -> list[Module]:
    return [Module(t, {n: DenseDelta(torch.tensor(FIXTURE["inputs"][t][n], dtype=torch.float64)) for n in names}) for t in TASKS]


def expected(key: str, name: str) -> torch.Tensor:
    return torch.tensor(FIXTURE["outputs"][key][name], dtype=torch.float64)


def check(merged: Module, key: str, names: tuple[str, ...], atol: float = 1e-10) -> None:
    for name in names:
        got = merged.layers[name].dense()
        torch.testing.assert_close(got, expected(key, name), atol=atol, rtol=0, msg=f"{key}: {name}")


ALL = ("layer1.weight", "layer2.weight", "layer1.bias")
WEIGHTS_ONLY = ("layer1.weight", "layer2.weight")


@pytest.mark.parametrize(
    ("key", "method", "params"),
    [
        ("tsv_m", "tsv", {}),
        ("iso_c", "iso_c", {}),
        ("iso_cts", "iso_cts", {"common_space_fraction": 0.8}),
        ("iso_cts_frac0.2", "iso_cts", {"common_space_fraction": 0.2}),
        ("ties_global", "ties", {"density": 0.2, "trim": "global"}),
    ],
)
def test_matrices_and_biases_equal_the_reference_code(key, method, params):
    """The matrices, and the bias: averaged for TSV-M and Iso (not summed: with K = 3 a sum
    would be 3× the reference), TIES-merged with the global top-k for TIES."""
    check(eigenmix.merge(task_modules(), method, **params), key, ALL)


def test_star_equals_the_reference_code():
    check(eigenmix.merge(task_modules(WEIGHTS_ONLY), "star", eta=0.4), "star_eta40", WEIGHTS_ONLY)


def test_knots_ties_with_the_global_top_k_equals_the_reference_code():
    merged = eigenmix.merge(task_modules(WEIGHTS_ONLY), "knots")  # defaults: ties, top-k 20%, trim global
    check(merged, "knots_ties_global", WEIGHTS_ONLY)


def test_knots_with_per_layer_trimming_is_a_different_merge():
    layer = eigenmix.merge(task_modules(WEIGHTS_ONLY), "knots", trim="layer")
    differences = [float((layer.layers[n].dense() - expected("knots_ties_global", n)).abs().max()) for n in WEIGHTS_ONLY]
    assert max(differences) > 1e-3


def test_knots_dare_equals_the_reference_code_given_its_masks(monkeypatch):
    """KnOTS-DARE drops 10% of the coefficients (the reference's dare_pruning_coeffs 0.1),
    rescales by 1/0.9, then TIES at top-k 100%. The masks the reference drew are fed in,
    in eigenmix's order (layer by layer, tasks in turn)."""
    masks = FIXTURE["outputs"]["knots_dare"]["masks"]
    queue = [torch.tensor(masks[t][layer], dtype=torch.float64) for layer in ("layer1", "layer2") for t in TASKS]

    def recorded(shape, density, generator):
        assert density == pytest.approx(0.9)
        mask = queue.pop(0)
        assert tuple(mask.shape) == tuple(shape)
        return mask

    monkeypatch.setattr(knots_module, "bernoulli_mask", recorded)
    merged = eigenmix.merge(task_modules(WEIGHTS_ONLY), "knots", merge="dare_ties")
    assert not queue
    check(merged, "knots_dare", WEIGHTS_ONLY)
