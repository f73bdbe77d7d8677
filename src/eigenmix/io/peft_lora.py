"""Read and write PEFT LoRA adapter folders (``adapter_config.json`` +
``adapter_model.safetensors``) as eigenmix modules.

Layer names are the module paths inside the base model (PEFT's ``base_model.model.``
prefix removed); deltas are ``scale · B A`` in ``(out, in)`` orientation. PEFT stores
``lora_A`` as ``(r, in)`` and ``lora_B`` as ``(out, r)`` also for ``fan_in_fan_out``
layers (GPT-2 ``Conv1D``), so only a full-model writer needs that flag
(``Module.fan_in_fan_out``). Tensors that are not LoRA factors (``modules_to_save`` heads, trained biases)
become ``extras``.

A conv LoRA (PEFT's ``Conv1d/2d/3d``: ``lora_A`` a conv with the base's kernel and stride,
``(r, in, *k)``; ``lora_B`` a 1×1 conv ``(out, r, 1, …)``) is the low-rank delta
``B.flatten(1) @ A.flatten(1) · scale`` on the kernel's matrix view ``(out, in·∏k)``, with the
kernel shape ``(out, in, *k)`` kept (:class:`LowRankDelta.kernel`) and written back the same
way. A LoRA on a grouped conv (``lora_B`` with ``r/groups`` input channels) has no single
matrix delta — PEFT cannot merge it either — and is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from eigenmix.errors import InvalidInputError, ShapeMismatchError, UnsupportedAdapterError
from eigenmix.io.atomic import atomic_dir
from eigenmix.io.peft_config import CONFIG_NAME, layer_rank_alpha, lora_scale, read_config, targets_layer
from eigenmix.io.safetensors_io import SAFETENSORS_DTYPES, check_finite, open_safetensors, read_tensor, refuse_pickle
from eigenmix.modules import DenseDelta, LowRankDelta, Module, PeftSource, SpectralDelta, tensor_kind

WEIGHTS_NAME = "adapter_model.safetensors"
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # safetensors' names of the float dtypes
PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<layer>.+)\.lora_(?P<which>A|B)\.weight$")
_REFUSED_KEYS = {
    "lora_magnitude_vector": "DoRA (lora_magnitude_vector tensors)",
    "lora_embedding_A": "LoRA on embedding layers (lora_embedding_A)",
    "lora_embedding_B": "LoRA on embedding layers (lora_embedding_B)",
    ".lora_A.bias": "LoRA with a bias (lora_A.bias)",
    ".lora_B.bias": "LoRA with a bias (lora_B.bias)",
}


def adapter_digest(folder: Path | str) -> str:
    """The SHA-256 of an adapter's weights file: what a report records, so that a later
    reader can tell the adapter it names from another one put in its place."""
    with (Path(folder) / WEIGHTS_NAME).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _weights_file(folder: Path) -> Path:
    path = folder / WEIGHTS_NAME
    if path.is_file():
        return path
    for pickle_name in ("adapter_model.bin", "adapter_model.pt"):
        if (folder / pickle_name).is_file():
            raise refuse_pickle(folder / pickle_name)
    raise InvalidInputError(f"{folder}: no {WEIGHTS_NAME}")


class LazyLoraLayers(Mapping[str, LowRankDelta]):
    """Layer name → :class:`LowRankDelta`, each read (and checked for NaN/Inf) from the
    open safetensors file when first asked for, so a merge holds one layer at a time."""

    def __init__(
        self, handle: Any, path: Path, keys: dict[str, tuple[str, str]], scales: dict[str, float], shapes: dict[str, tuple[int, int]]
    ) -> None:
        self._handle, self._path, self._keys, self._scales = handle, path, keys, scales
        self.shapes = shapes  # (out, in) or a conv's (out, in, *k) per layer, from the file header: no data read
        self.dtypes = {layer: SAFETENSORS_DTYPES[handle.get_slice(a).get_dtype()] for layer, (a, _) in keys.items()}  # lora_A's

    def __getitem__(self, layer: str) -> LowRankDelta:
        key_a, key_b = self._keys[layer]
        A, B = self._handle.get_tensor(key_a), self._handle.get_tensor(key_b)
        check_finite(key_a, A, self._path)
        check_finite(key_b, B, self._path)
        kernel = self.shapes[layer] if A.ndim > 2 else None
        return LowRankDelta(B.flatten(1), A.flatten(1), self._scales[layer], kernel)

    def __contains__(self, layer: object) -> bool:  # Mapping's default reads the layer
        return layer in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def read_lora_adapter(path: Path | str, *, name: str | None = None, lazy: bool = False) -> Module:
    """Read a PEFT LoRA adapter folder into a :class:`Module` of :class:`LowRankDelta`.

    With ``lazy``, the config, tensor names and shapes are checked now and each layer's
    factors are read when the layer is first used (the file stays memory-mapped).

    Raises:
        InvalidInputError: missing folder or files, malformed config, corrupt weights.
        UnsupportedAdapterError: a non-LoRA type or a LoRA variant (DoRA, ...), named.
        ShapeMismatchError: tensors that disagree with each other or with the config.
        NonFiniteError: NaN or Inf in a tensor.
    """
    folder = Path(path)
    if not folder.exists():
        raise InvalidInputError(f"{folder}: no such adapter folder")
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: not a folder; a PEFT adapter is a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = read_config(folder)
    weights_path = _weights_file(folder)
    handle = open_safetensors(weights_path)
    factors: dict[str, dict[str, str]] = {}
    extras: dict[str, Tensor] = {}
    for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
        for marker, what in _REFUSED_KEYS.items():
            if marker in key:
                raise UnsupportedAdapterError(f"{weights_path}: {what} is not supported; it changes the maths of the update")
        rel = key.removeprefix(PREFIX)
        match = _FACTOR.match(rel)
        if match:
            factors.setdefault(match["layer"], {})[match["which"]] = key
        else:
            extras[rel] = read_tensor(handle, key, weights_path)
    if not factors:
        raise InvalidInputError(f"{weights_path}: holds no LoRA weights (no '*.lora_A.weight' tensors)")
    for layer, pair in factors.items():
        for key in pair.values():
            dtype = handle.get_slice(key).get_dtype()
            if dtype not in FLOAT_DTYPES:
                raise InvalidInputError(f"{weights_path}: tensor '{key}' is {dtype}; LoRA factors must be floating point")
        if targets_layer(config, layer) is False:
            raise InvalidInputError(
                f"{weights_path}: layer '{layer}' has LoRA weights but target_modules {config['target_modules']!r} does not select it "
                "(PEFT would not load them)"
            )
    shapes = {k: tuple(handle.get_slice(k).get_shape()) for pair in factors.values() for k in pair.values()}
    scales = {layer: _layer_scale(layer, pair, shapes, config, weights_path) for layer, pair in sorted(factors.items())}
    keys = {layer: (factors[layer]["A"], factors[layer]["B"]) for layer in scales}
    delta_shapes = {layer: (shapes[b][0], *shapes[a][1:]) for layer, (a, b) in keys.items()}
    lazy_layers = LazyLoraLayers(handle, weights_path, keys, scales, delta_shapes)
    layers: Mapping[str, LowRankDelta] = lazy_layers if lazy else {layer: lazy_layers[layer] for layer in keys}
    return Module(
        name=name or folder.resolve().name,
        layers=layers,
        base_model=config.get("base_model_name_or_path"),
        source=str(folder),
        extras=extras,
        fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        peft=PeftSource(config),
    )


def _layer_scale(layer: str, pair: dict[str, str], shapes: dict[str, tuple[int, ...]], config: dict[str, Any], where: Path) -> float:
    """Check one layer's factor shapes against each other and the config; its scale."""
    if set(pair) != {"A", "B"}:
        missing = "lora_B" if "A" in pair else "lora_A"
        raise ShapeMismatchError(f"{where}: layer '{layer}' has no {missing}.weight")
    a, b = shapes[pair["A"]], shapes[pair["B"]]
    if len(a) != len(b) or tensor_kind(a) == "vector":
        raise ShapeMismatchError(
            f"{where}: layer '{layer}' has lora_A {a} and lora_B {b}; LoRA factors are 2-D (linear) or 3- to 5-D (conv)"
        )
    if any(x != 1 for x in b[2:]):
        raise UnsupportedAdapterError(f"{where}: layer '{layer}': lora_B {b} is no 1×1 conv, as PEFT's conv LoRA has")
    r, alpha = layer_rank_alpha(config, layer)
    if len(a) > 2 and a[0] == r and b[1] != r and b[1] > 0 and r % b[1] == 0:
        raise UnsupportedAdapterError(
            f"{where}: layer '{layer}' is a LoRA on a grouped conv (groups = {r // b[1]}): it has no single matrix delta "
            "(PEFT cannot merge it either)"
        )
    if a[0] != r or b[1] != r:
        raise ShapeMismatchError(f"{where}: layer '{layer}': lora_A {a} and lora_B {b} disagree with r={r} from the config")
    return lora_scale(alpha, r, rslora=bool(config.get("use_rslora", False)))


def peft_factors(delta: LowRankDelta, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """``(lora_A, lora_B)`` as PEFT stores them: ``(r, n)`` and ``(m, r)``, or for a conv
    kernel ``(m, in, *k)`` the conv factors ``(r, in, *k)`` and ``(m, r, 1, …)``; contiguous,
    in ``dtype`` (default: the delta's own)."""
    A, B = delta.A, delta.B
    if delta.kernel is not None:
        A = A.reshape(delta.rank, *delta.kernel[1:])
        B = B.reshape(*B.shape, *([1] * (len(delta.kernel) - 2)))
    if dtype is not None:
        A, B = A.to(dtype), B.to(dtype)
    return A.contiguous(), B.contiguous()


def _as_lowrank(name: str, delta: object) -> LowRankDelta:
    if isinstance(delta, LowRankDelta):
        return delta
    if isinstance(delta, SpectralDelta):
        return delta.lowrank()
    if isinstance(delta, DenseDelta):
        raise InvalidInputError(
            f"layer '{name}' is a dense delta; a LoRA adapter needs low-rank layers (truncate it with .lowrank(rank) first)"
        )
    raise TypeError(f"layer '{name}': unknown delta type {type(delta).__name__}")


def _config_reproduces(config: dict[str, Any], layers: Mapping[str, LowRankDelta]) -> bool:
    """True when ``config`` gives exactly these ranks and scales to these layers."""
    rslora = bool(config.get("use_rslora", False))
    for name, d in layers.items():
        r, alpha = layer_rank_alpha(config, name)
        if r != d.rank or lora_scale(alpha, r, rslora=rslora) != d.scale:
            return False
    return True


def build_config(module: Module, layers: Mapping[str, LowRankDelta]) -> dict[str, Any]:
    """A LoRA config whose per-layer ranks and scales reproduce ``layers`` exactly.

    Reuses the module's own PEFT config when it already does; otherwise see
    :func:`lora_config`.
    """
    source = dict(module.peft.config) if module.peft is not None else {}
    if source and set(layers) == set(module.layers) and _config_reproduces(source, layers):
        return source
    return lora_config(
        {name: (d.rank, d.scale) for name, d in layers.items()},
        template=source,
        fan_in_fan_out=module.fan_in_fan_out,
        modules_to_save=list(module.peft.modules_to_save) if module.peft is not None and module.peft.modules_to_save else None,
        base_model=module.base_model,
    )


def lora_config(
    ranks: Mapping[str, tuple[int, float]],
    *,
    template: dict[str, Any] | None = None,
    fan_in_fan_out: bool = False,
    modules_to_save: list[str] | None = None,
    base_model: str | None = None,
) -> dict[str, Any]:
    """A LoRA config for layers with the given ``(rank, scale)``: full-name
    ``target_modules``, the most common rank and ``alpha = scale · r`` as defaults, and
    ``rank_pattern`` / ``alpha_pattern`` for the others (keys escaped and longest first,
    so PEFT's suffix matching picks each layer's own entry)."""
    template = template or {}
    r = Counter(rank for rank, _ in ranks.values()).most_common(1)[0][0]
    alpha = Counter(scale * r for rank, scale in ranks.values() if rank == r).most_common(1)[0][0]
    rank_pattern, alpha_pattern = {}, {}
    for name in sorted(ranks, key=lambda n: (-n.count("."), n)):
        rank, scale = ranks[name]
        if rank != r:
            rank_pattern[re.escape(name)] = rank
        if scale * rank != alpha or rank != r:
            alpha_pattern[re.escape(name)] = scale * rank
    config = {k: v for k, v in template.items() if k in ("task_type", "base_model_name_or_path", "revision", "bias")}
    return config | {
        "peft_type": "LORA",
        "r": int(r),
        "lora_alpha": float(alpha),
        "target_modules": sorted(ranks),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "use_rslora": False,
        "fan_in_fan_out": fan_in_fan_out,
        "modules_to_save": modules_to_save,
        "lora_dropout": 0.0,
        "bias": template.get("bias", "none"),
        "inference_mode": True,
        "base_model_name_or_path": base_model,
    }


def write_lora_files(module: Module, folder: Path) -> None:
    """Write the adapter files of ``module`` into an existing ``folder`` (not atomic)."""
    layers = {name: _as_lowrank(name, d) for name, d in module.layers.items()}
    config = build_config(module, layers)
    tensors: dict[str, Tensor] = {}
    for name, d in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"], tensors[f"{PREFIX}{name}.lora_B.weight"] = peft_factors(d)
    for name, t in module.extras.items():
        tensors[f"{PREFIX}{name}"] = t.contiguous()
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_lora_adapter(module: Module, out: Path | str, *, overwrite: bool = False) -> Path:
    """Write ``module`` as a PEFT LoRA adapter folder that ``PeftModel.from_pretrained`` loads.

    Low-rank layers are written as they are; spectral ones as balanced factors
    (``B = U√σ``, ``A = √σ Vᵀ``). The folder is written atomically.

    Raises:
        InvalidInputError: a dense layer (truncate it first), or ``out`` exists (without
            ``overwrite``, or it is not an adapter folder).
    """
    for name, d in module.layers.items():
        _as_lowrank(name, d)  # fail before anything is written
    with atomic_dir(out, overwrite=overwrite, marker=CONFIG_NAME) as tmp:
        write_lora_files(module, tmp)
    return Path(out)
