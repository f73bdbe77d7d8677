"""Conv kernels are matrices: every merge method sees a kernel ``(out, in/g, kh, kw)`` as
the matrix ``(out, in/g·kh·kw)`` (PEFT's and AdaLoRA's view) and gives the merged kernel
back in its own shape. Before this, a 4-D kernel fell to the methods' *vector* rule: under
``tsv``, ``iso_c``, ``spectral``… CNN fine-tunes were averaged element-wise, silently."""

from __future__ import annotations

import pytest
import torch

import eigenmix
from dense_reference import iso_c, linear, spectral, ties, tsv
from eigenmix.merging import Grams, all_methods, get_method
from eigenmix.modules import DenseDelta, LowRankDelta, Module, SpectralDelta, tensor_kind

WEIGHTS = [1.0, 0.7, 1.3]
KERNEL = (12, 4, 3, 3)  # (out, in, kh, kw): the matrix view is (12, 36)


def kernels(seed: int, rank: int = 3) -> list[torch.Tensor]:
    """Three float64 conv kernels of low rank in the matrix view (CNN task vectors)."""
    g = torch.Generator().manual_seed(seed)
    out, rest = KERNEL[0], KERNEL[1] * KERNEL[2] * KERNEL[3]
    pairs = [(torch.randn(out, rank, generator=g, dtype=torch.float64), torch.randn(rank, rest, generator=g, dtype=torch.float64))
             for _ in range(3)]  # fmt: skip
    return [(B @ A).reshape(KERNEL) for B, A in pairs]


def calibration(method: str) -> dict:
    """Grams of the kernel's unfolded-patch rows ``(pixels, in·kh·kw)`` for a calibrated method."""
    kind = get_method(method).calibration
    if kind is None:
        return {}
    g = torch.Generator().manual_seed(7)
    n = KERNEL[1] * KERNEL[2] * KERNEL[3]
    grams = [{"conv": (X := torch.randn(2 * n, n, generator=g, dtype=torch.float64)).T @ X} for _ in range(3)]
    return {"calibration": Grams(grams, kind=kind)}


def merged_kernel(mods: list[Module], method: str, **params) -> torch.Tensor:
    out = eigenmix.merge(mods, method, weights=WEIGHTS, seed=3, **calibration(method), **params).layers["conv"]
    return out.tensor()


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-9) -> bool:
    return a.shape == b.shape and float((a - b).norm()) <= rel * max(float(b.norm()), 1e-30)


def test_tensors_are_classified_by_what_they_are():
    assert tensor_kind((12, 36)) == "matrix"
    assert tensor_kind((12, 4, 3, 3)) == "kernel"  # Conv2d
    assert tensor_kind((12, 4, 3)) == "kernel"  # Conv1d
    assert tensor_kind((12, 4, 3, 3, 3)) == "kernel"  # Conv3d
    assert tensor_kind((12,)) == "vector"
    assert tensor_kind(()) == "vector"


@pytest.mark.parametrize("method", [m.name for m in all_methods()])
def test_every_method_merges_a_conv_kernel_as_its_matrix_view(method):
    """The failing-first test of the conv-kernel defect: a 4-D kernel merges exactly as its
    ``(out, in·kh·kw)`` matrix does, and comes back 4-D."""
    ks = kernels(0)
    as_kernels = [Module(f"m{i}", {"conv": DenseDelta(k)}) for i, k in enumerate(ks)]
    as_matrices = [Module(f"m{i}", {"conv": DenseDelta(k.reshape(KERNEL[0], -1))}) for i, k in enumerate(ks)]
    got = merged_kernel(as_kernels, method)
    want = merged_kernel(as_matrices, method).reshape(KERNEL)
    assert got.shape == KERNEL
    assert close(got, want, 1e-12), method


def test_spectral_methods_on_kernels_match_dense_references():
    """Against the independent dense references on the matrix view (a mean of the kernels,
    which the vector rule gave, is far from each)."""
    ks = kernels(1)
    views = [k.reshape(KERNEL[0], -1) for k in ks]
    mods = [Module(f"m{i}", {"conv": DenseDelta(k)}) for i, k in enumerate(ks)]
    refs = {
        "tsv": (tsv(views, WEIGHTS), {}),
        "iso_c": (iso_c(views, WEIGHTS), {}),
        "spectral": (spectral(views, WEIGHTS), {}),
        "linear": (linear(views, WEIGHTS, normalize=True), {"normalize": True}),
        "ties": (ties(views, WEIGHTS, 0.3), {"density": 0.3}),
    }
    for method, (ref, params) in refs.items():
        got = merged_kernel(mods, method, **params)
        assert close(got, ref.reshape(KERNEL), 1e-8), method
    elementwise_mean = sum(w * k for w, k in zip(WEIGHTS, ks, strict=True)) / 3
    assert not close(merged_kernel(mods, "tsv"), elementwise_mean, 1e-2)


@pytest.mark.parametrize("method", ["tsv", "iso_c", "spectral", "ties", "linear"])
def test_conv_lora_factors_merge_like_their_dense_kernels(method):
    """A conv LoRA (``lora_A`` ``(r, in, kh, kw)``, ``lora_B`` ``(out, r, 1, 1)``) is a low-rank
    delta on the matrix view, and a merge of them equals the merge of the dense kernels."""
    g = torch.Generator().manual_seed(2)
    r = 2
    factors = [(torch.randn(KERNEL[0], r, generator=g, dtype=torch.float64), torch.randn(r, 36, generator=g, dtype=torch.float64))
               for _ in range(3)]  # fmt: skip
    lora = [Module(f"m{i}", {"conv": LowRankDelta(B, A, 0.5, kernel=KERNEL)}) for i, (B, A) in enumerate(factors)]
    dense = [Module(f"m{i}", {"conv": DenseDelta((0.5 * B @ A).reshape(KERNEL))}) for i, (B, A) in enumerate(factors)]
    assert close(merged_kernel(lora, method), merged_kernel(dense, method), 1e-9)


def test_kernel_shape_survives_every_delta_form():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(KERNEL, generator=g, dtype=torch.float64)
    d = DenseDelta(W)
    assert d.shape == (12, 36) and d.kernel == KERNEL and torch.equal(d.tensor(), W)
    s = d.spectral()
    assert isinstance(s, SpectralDelta) and s.kernel == KERNEL and close(s.tensor(), W, 1e-12)
    low = s.lowrank()
    assert low.kernel == KERNEL and close(low.tensor(), W, 1e-12)
    assert s.truncate(2).kernel == KERNEL
    with pytest.raises(ValueError, match="kernel"):
        LowRankDelta(torch.zeros(12, 2), torch.zeros(2, 35), kernel=KERNEL)


def test_cnn_fine_tunes_merge_to_a_full_model_through_the_installed_script(tmp_path):
    """Full CNN fine-tunes (task vectors with 4-D kernels) merged by ``tsv`` into a full
    model: each kernel is base + the matrix-view merge, reshaped; biases follow the vector rule."""
    import subprocess

    import yaml
    from safetensors.torch import load_file, save_file

    from common import eigenmix_script
    from eigenmix.io import load_task_vector

    g = torch.Generator().manual_seed(4)
    base = {"conv.weight": torch.randn(KERNEL, generator=g), "conv.bias": torch.randn(12, generator=g)}
    (tmp_path / "base").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"))
    folders = []
    for i, k in enumerate(kernels(5)):
        folders.append(tmp_path / f"ft{i}")
        folders[-1].mkdir()
        save_file({"conv.weight": base["conv.weight"] + k.float(), "conv.bias": base["conv.bias"] + 0.1 * i},
                  str(folders[-1] / "model.safetensors"))  # fmt: skip
    config = {"method": "tsv", "base_model": str(tmp_path / "base"), "modules": [{"path": str(f)} for f in folders],
              "output": {"kind": "full"}}  # fmt: skip
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([str(eigenmix_script()), "merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    in_memory = eigenmix.merge([load_task_vector(tmp_path / "base", f) for f in folders], "tsv").layers["conv.weight"]
    assert in_memory.kernel == KERNEL and written["conv.weight"].shape == KERNEL
    assert close(written["conv.weight"].double(), (base["conv.weight"] + in_memory.tensor()).double(), 1e-6)
    mean = sum(load_file(str(f / "model.safetensors"))["conv.weight"] for f in folders) / 3  # what the vector rule wrote
    assert not close(written["conv.weight"], mean, 1e-2)
    assert torch.allclose(written["conv.bias"], base["conv.bias"] + 0.1, atol=1e-6)  # the mean of 0, 0.1, 0.2
