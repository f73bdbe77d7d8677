"""The tuning starts' registry: one entry per merge a tuning run can start from, named as
that merge method, whose calibration says whether the start needs statistics; duplicates
refused, an unknown start one line; a data-free start refuses statistics."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from peft import LoraConfig

from common import base_model, make_adapter
from eigenmix.compose import gram_statistics
from eigenmix.errors import InvalidInputError
from eigenmix.io import read_lora_adapter
from eigenmix.merging import get_method
from eigenmix.tune import build
from eigenmix.tune.starts import Init, all_starts, get_start, register_start


def test_every_start_is_a_merge_method_and_the_init_choices_are_the_registered_ones():
    names = [s.name for s in all_starts()]
    assert names == list(get_args(Init)) == ["spectral", "task_arithmetic", "spectral_ls", "spectral_align"]
    assert {s.name: s.calibration for s in all_starts()} == {n: get_method(n).calibration for n in names}
    assert [s.name for s in all_starts() if s.calibration is not None] == ["spectral_ls", "spectral_align"]


def test_a_start_registered_twice_is_refused():
    with pytest.raises(ValueError, match="tuning start 'spectral' is already registered"):
        register_start("spectral")(lambda layer, s: None)  # type: ignore[arg-type,return-value]
    assert get_start("spectral").factors.__name__ == "spectral_start"


def test_an_unknown_start_is_one_line():
    with pytest.raises(InvalidInputError) as err:
        get_start("spectra")
    assert str(err.value) == "unknown init 'spectra' (did you mean 'spectral'?) (spectral, task_arithmetic, spectral_ls or spectral_align)"


def test_a_data_free_start_refuses_statistics(tmp_path):
    folder = tmp_path / "m"
    make_adapter(folder, LoraConfig(r=2, lora_alpha=4, target_modules=["encoder.q"]), seed=1)
    modules = [read_lora_adapter(folder, name="m")]
    stats = gram_statistics(base_model(), modules, [[{"x": torch.randn(4, 12)}]])
    with pytest.raises(InvalidInputError, match="init 'spectral' is data-free: it takes no calibration statistics"):
        build(base_model(), modules, init="spectral", calibration=stats)
