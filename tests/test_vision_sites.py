"""The live pieces on the real vision backbone: PEFT conv LoRAs on EfficientNet-Lite0 (the
stem, 1×1 expand/project convs, the head conv) read into a library and run by the routed
model on image batches equal PEFT's own model with that adapter; a library of them refuses a
depthwise conv in one line."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel

from common import save_random_adapter
from eigenmix.compose import Library, RoutedModel, site_at
from eigenmix.compose.routers import GivenRouter
from eigenmix.data.images import fashion_mnist
from eigenmix.errors import InvalidInputError
from eigenmix.io import read_lora_adapter
from eigenmix.vision import inputs, load_efficientnet_lite0

TARGETS = ["_conv_stem", "_blocks.1._expand_conv", "_blocks.1._project_conv", "_conv_head"]


@pytest.fixture(scope="module")
def lite0():
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def adapters(lite0, tmp_path_factory):
    root = tmp_path_factory.mktemp("lite0_lora")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS)
    return [save_random_adapter(lite0, config, root / f"a{i}", seed=30 + i, scale=0.05, only="lora_B") for i in range(2)]


def test_routed_lite0_equals_peft_with_each_adapter(lite0, adapters):
    images = fashion_mnist("test", limit=4).images
    [(_, batch)] = inputs(64).batches(images, 4)
    library = Library()
    for folder in adapters:
        library.add(read_lora_adapter(folder))
    routed = RoutedModel(copy.deepcopy(lite0), library, GivenRouter())
    with torch.no_grad():
        for k, folder in enumerate(adapters):
            given = torch.zeros(4, 2)
            given[:, k] = 1.0
            got = routed(**batch, given=given)
            want = PeftModel.from_pretrained(copy.deepcopy(lite0), str(folder)).eval()(**batch)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        base = lite0(**batch)
        assert (routed(**batch, given=torch.zeros(4, 2)) - base).abs().max() == 0  # coefficient 0: the base model
    routed.detach_hooks()


def test_a_depthwise_conv_is_no_site(lite0):
    conv = lite0.get_submodule("_blocks.1._depthwise_conv")
    with pytest.raises(InvalidInputError, match="grouped Conv2d"):
        site_at(lite0, "_blocks.1._depthwise_conv", tuple(conv.weight.shape))


def test_the_evaluator_applies_conv_deltas_and_reads_image_features(lite0, adapters):
    """The benchmark's evaluator on the image backbone: a conv adapter written into the
    weights gives PEFT's features, and a split's accuracy is the head's on them."""
    from eigenmix.harness.backbones import load_backbone
    from eigenmix.harness.evaluator import Evaluator, Head
    from eigenmix.vision import features

    ev = Evaluator(backbone=load_backbone("efficientnet-lite0", image_size=64))
    data = fashion_mnist("test", limit=12)
    split = ev.images({"fashion": data}, batch_size=5)
    module = read_lora_adapter(adapters[0])
    ev.apply({layer: d.tensor() for layer, d in module.layers.items()})
    peft = PeftModel.from_pretrained(copy.deepcopy(lite0), str(adapters[0])).eval()
    with torch.no_grad():
        want = features(peft, inputs(64).pixels(data.images))
        got = ev.features(split)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    head = Head(torch.randn(10, 1280, generator=torch.Generator().manual_seed(0)), torch.zeros(10))
    expected = float(((want @ head.weight.T).argmax(-1) == data.labels).float().mean())
    assert ev.accuracies(split, {"fashion": head})["fashion"] == pytest.approx(expected)
    ev.apply(None)  # back to the base weights
    with torch.no_grad():
        torch.testing.assert_close(ev.features(split), features(lite0, inputs(64).pixels(data.images)), rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInputError, match="takes images, not text"):
        ev.text  # noqa: B018 - the property raises
