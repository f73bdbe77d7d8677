"""Conv LoRA adapters (PEFT's ``Conv2d``: ``lora_A`` with the base's kernel, ``lora_B`` a
1×1 conv): read, merged on the kernels' matrix views, written back as conv LoRAs that load in
PEFT; merges equal PEFT's ``add_weighted_adapter`` (``svd``, ``ties_svd``,
``magnitude_prune_svd`` at full rank, ``cat``) within 1e-5 relative; a LoRA on a grouped
conv is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

import eigenmix
from common import eigenmix_script, save_random_adapter
from eigenmix.errors import UnsupportedAdapterError
from eigenmix.io import read_lora_adapter, write_lora_adapter

LAYERS = ("conv3", "conv1", "fc")


class TinyCNN(nn.Module):
    """A 3×3 conv (matrix view 6 × 36), a 1×1 conv (6 × 6) and a linear head (6 × 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 4, H, W)
        h = self.conv1(torch.tanh(self.conv3(x)))  # (batch, 6, H, W)
        return self.fc(h.mean((2, 3)))  # (batch, 6)


def base() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN()


def images() -> torch.Tensor:
    return torch.randn(5, 4, 7, 7, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft_conv")
    configs = [LoraConfig(r=r, lora_alpha=alpha, target_modules=list(LAYERS)) for r, alpha in [(2, 4), (3, 3), (2, 8)]]
    return [save_random_adapter(base(), config, root / f"a{i}", seed=10 + i) for i, config in enumerate(configs)]


def peft_deltas(model, adapter: str) -> dict[str, torch.Tensor]:
    return {layer: model.base_model.model.get_submodule(layer).get_delta_weight(adapter).detach() for layer in LAYERS}


def peft_merge(folders, weights, combination_type, **kw) -> dict[str, torch.Tensor]:
    model = PeftModel.from_pretrained(base(), str(folders[0]), adapter_name="a0")
    for i, folder in enumerate(folders[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(folders))]
    model.add_weighted_adapter(names, weights, "merged", combination_type=combination_type, svd_rank=6, **kw)
    return peft_deltas(model, "merged")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_conv_lora_reads_as_the_delta_peft_computes(adapters):
    module = read_lora_adapter(adapters[0])
    expected = peft_deltas(PeftModel.from_pretrained(base(), str(adapters[0])), "default")
    assert module.shapes()["conv3"] == (6, 4, 3, 3) and module.shapes()["conv1"] == (6, 6, 1, 1)
    for layer in LAYERS:
        delta = module.layers[layer]
        assert delta.tensor().shape == expected[layer].shape
        assert rel(delta.tensor(), expected[layer]) <= 1e-6, layer


@pytest.mark.parametrize(
    ("combination", "method", "weights", "params"),
    [
        ("svd", "linear", [0.5, 1.0, 1.5], {}),
        ("cat", "linear", [0.5, 1.0, 1.5], {}),
        ("ties_svd", "ties", [1.0, 1.0, 1.0], {"density": 0.5}),
        ("magnitude_prune_svd", "magnitude_prune", [0.5, 1.0, 1.5], {"density": 0.5}),
    ],
)
def test_conv_merges_equal_peft(adapters, combination, method, weights, params):
    peft_kw = {"density": params["density"]} if "density" in params else {}
    expected = peft_merge(adapters, weights, combination, **peft_kw)
    got = eigenmix.merge([read_lora_adapter(f) for f in adapters], method, weights=weights, **params)
    for layer in LAYERS:
        assert rel(got.layers[layer].tensor(), expected[layer]) <= 1e-5, (combination, layer)


def test_merged_conv_adapter_written_and_loaded_in_peft(adapters, tmp_path):
    merged = eigenmix.merge([read_lora_adapter(f) for f in adapters], "tsv")
    write_lora_adapter(merged, tmp_path / "out")
    tensors = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    A = tensors["base_model.model.conv3.lora_A.weight"]
    assert A.ndim == 4 and A.shape[1:] == (4, 3, 3)  # a conv LoRA stays a conv LoRA
    loaded = peft_deltas(PeftModel.from_pretrained(base(), str(tmp_path / "out")), "default")
    for layer in LAYERS:
        assert rel(loaded[layer], merged.layers[layer].tensor()) <= 1e-5, layer


@pytest.mark.parametrize("method", ["tsv", "ties", "spectral"])
def test_eigenmix_merge_of_conv_adapters_loads_in_peft_through_the_installed_script(adapters, tmp_path, method):
    import subprocess

    config = {"method": method, "modules": [{"path": str(f), "weight": w} for f, w in zip(adapters, (1.0, 0.5, 0.8), strict=True)]}
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([str(eigenmix_script()), "merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    merged = eigenmix.merge([read_lora_adapter(f) for f in adapters], method, weights=[1.0, 0.5, 0.8])
    reference = base()
    with torch.no_grad():
        for layer in LAYERS:
            reference.get_submodule(layer).weight += merged.layers[layer].tensor().float()
        model = PeftModel.from_pretrained(base(), str(tmp_path / "out")).eval()
        assert (model(images()) - reference(images())).abs().max() <= 1e-5


@pytest.mark.filterwarnings("ignore:LoRA adapter added to ConvNd layer with groups:UserWarning")
def test_a_lora_on_a_grouped_conv_is_refused_in_one_line(tmp_path):
    """PEFT gives a grouped conv's ``lora_B`` ``r / groups`` input channels: no single matrix delta."""

    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, groups=2)

        def forward(self, x):
            return self.conv(x)

    torch.manual_seed(0)
    get_peft_model(Grouped(), LoraConfig(r=4, target_modules=["conv"])).save_pretrained(str(tmp_path / "g"))
    with pytest.raises(UnsupportedAdapterError, match="grouped conv"):
        read_lora_adapter(tmp_path / "g")
    import subprocess

    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"method": "tsv", "modules": [{"path": str(tmp_path / "g"), "name": n} for n in "ab"]}))
    done = subprocess.run([str(eigenmix_script()), "merge", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "grouped conv" in done.stderr
    assert not (tmp_path / "o").exists()


def test_conv_factors_that_disagree_are_one_line(adapters, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    tensors = load_file(str(adapters[0] / "adapter_model.safetensors"))
    key = "base_model.model.conv3.lora_B.weight"
    tensors[key] = tensors[key].repeat(1, 1, 3, 3)  # a 3×3 lora_B: not PEFT's conv LoRA
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(json.loads((adapters[0] / "adapter_config.json").read_text())))
    with pytest.raises(UnsupportedAdapterError, match="1×1"):
        read_lora_adapter(folder)
