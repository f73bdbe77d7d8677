"""The one hook mechanism's pass-ending hook: after the named module runs, the pass ends
(no later module runs); removing it gives the model back unchanged."""

from __future__ import annotations

import pytest
import torch

from common import base_model, inputs
from eigenmix.compose.hooks import StopPass, on_input, stop_after


def test_stop_after_ends_the_pass_and_removing_it_gives_the_model_back():
    model, x = base_model().eval(), inputs()
    with torch.no_grad():
        before = model(x)
    seen: list[str] = []
    readers = [
        on_input(model, name, model.get_submodule(name).weight.shape, lambda _, n=name: seen.append(n))
        for name in ("encoder.q", "encoder.out")
    ]
    handle = stop_after(model, "encoder.v")
    with pytest.raises(StopPass), torch.no_grad():
        model(x)
    assert seen == ["encoder.q"]  # encoder.out, after encoder.v, never ran
    handle.remove()
    for reader in readers:
        reader.remove()
    with torch.no_grad():
        assert torch.equal(model(x), before)
