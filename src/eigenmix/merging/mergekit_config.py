"""mergekit configs read as they are, for the methods both libraries have.

A YAML with ``merge_method`` is a mergekit config (mergekit 0.1.5's ``MergeConfiguration``);
it becomes the eigenmix config that computes the same merge, with mergekit's defaults where
the file is silent:

| mergekit | eigenmix |
|---|---|
| ``merge_method: task_arithmetic`` (normalize off) | ``task_arithmetic`` (``lambda`` → ``scale``) |
| ``ties`` (normalize on) | ``ties`` (``density``, ``normalize``, ``lambda`` → ``scale``) |
| ``dare_ties`` (normalize off, L1 rescale) | ``dare_ties`` (``rescale: l1`` or ``none``; its own seeded masks) |
| ``linear`` (normalize on) | ``linear`` on task vectors: ``base + Σ w τ / (w_base + Σ w)``, the weighted average of the models |
| ``models: - model: PATH``, ``parameters: {weight, density}`` | ``modules: - {path, weight}``; one ``density``; the base adds no τ |
| ``parameters:`` at the top (defaults of every model's) | the method's parameters |
| ``dtype`` / ``out_dtype`` | ``output.dtype`` (eigenmix computes in float32 whatever ``dtype`` says) |
| ``tokenizer_source: base`` (or none) | the base folder's tokenizer files are copied, as always |

The output is a full model (mergekit writes nothing else). What eigenmix cannot honour is
one line naming the key: ``slices``/``modules`` (layer ranges), a parameter given as a list or
per-tensor filters (gradients), per-model densities that differ, a hub id instead of a local
folder, ``model+lora`` references, other tokenizer sources, ``tokenizer``, ``chat_template``
and the other methods. ``int8_mask`` only saves mergekit memory and is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eigenmix.errors import InvalidInputError

METHODS: dict[str, tuple[str, dict[str, Any]]] = {  # mergekit name → eigenmix method, mergekit's defaults in eigenmix's terms
    "task_arithmetic": ("task_arithmetic", {"scale": 1.0}),
    "ties": ("ties", {"scale": 1.0, "normalize": True, "density": 1.0}),
    "dare_ties": ("dare_ties", {"scale": 1.0, "normalize": False, "density": 1.0, "rescale": "l1"}),
    "linear": ("linear", {"normalize": True}),
}
KNOWN = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source", "slices", "modules",
         "tokenizer", "chat_template", "name"}  # fmt: skip
UNSUPPORTED = {
    "slices": "eigenmix merges whole models; per-slice layer ranges are not supported",
    "modules": "eigenmix merges whole models; per-module layer ranges are not supported",
    "tokenizer": "eigenmix copies the base model's tokenizer; tokenizer merging is not supported",
    "chat_template": "eigenmix copies the base model's files; set the chat template in its tokenizer_config.json",
}
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def is_mergekit(raw: dict[str, Any]) -> bool:
    return "merge_method" in raw


def from_mergekit(raw: dict[str, Any], root: Path = Path()) -> dict[str, Any]:
    """The eigenmix config (a plain mapping, paths as written) of a mergekit config whose
    relative paths start at ``root``."""
    if not is_mergekit(raw):
        return raw
    for key in raw:
        if key in UNSUPPORTED:
            raise InvalidInputError(f"mergekit key '{key}': {UNSUPPORTED[key]}")
        if key not in KNOWN:
            raise InvalidInputError(f"mergekit key '{key}': not a mergekit 0.1.5 config key eigenmix reads")
    name = raw["merge_method"]
    if name not in METHODS:
        raise InvalidInputError(
            f"mergekit key 'merge_method': '{name}' has no eigenmix counterpart here (eigenmix reads {', '.join(METHODS)})"
        )
    method, defaults = METHODS[name]
    base = raw.get("base_model")
    if not isinstance(base, str):
        raise InvalidInputError("mergekit key 'base_model': eigenmix merges task vectors against a base model; give its local folder")
    base = _local(base, "base_model", root)
    source = raw.get("tokenizer_source")
    if source not in (None, "base"):
        raise InvalidInputError(f"mergekit key 'tokenizer_source': '{source}'; eigenmix copies the base model's tokenizer (use 'base')")
    top = _plain(raw.get("parameters") or {}, "parameters")
    params = _parameters(top, defaults, name)
    modules, base_weight = _models(raw.get("models") or [], base, top, params, name, root)
    if method == "linear" and params.pop("normalize"):  # base + Σ w τ / (w_base + Σ w): the weighted average of every listed model
        total = base_weight + sum(float(m["weight"]) for m in modules)
        if abs(total) < 1e-8:
            raise InvalidInputError("mergekit key 'models[].parameters.weight': the weights add up to 0; linear divides by their sum")
        modules = [{**m, "weight": m["weight"] / total} for m in modules]
        params["normalize"] = False
    return {"method": method, "base_model": base, "parameters": params, "modules": modules, "output": _output(raw)}


def _parameters(top: dict[str, Any], defaults: dict[str, Any], name: str) -> dict[str, Any]:
    """The method's parameters: mergekit's defaults, then the top-level ``parameters``."""
    params = dict(defaults)
    shared = {"lambda": "scale", "normalize": "normalize", "density": "density", "rescale": "rescale"}
    for key, value in top.items():
        if key in ("weight", "int8_mask"):
            continue
        if key not in shared or shared[key] not in params:
            raise InvalidInputError(f"mergekit key 'parameters.{key}': not a parameter of {name} that eigenmix reads")
        params[shared[key]] = ("l1" if value else "none") if key == "rescale" else value
    return params


def _models(
    entries: list[Any], base: str, top: dict[str, Any], params: dict[str, Any], name: str, root: Path
) -> tuple[list[dict[str, Any]], float]:
    """``modules`` entries (path, weight) of every model but the base, and the base's own
    weight (0 where it is not listed); the one density goes into ``params``."""
    modules: list[dict[str, Any]] = []
    densities: set[float] = set()
    base_weight = 0.0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise InvalidInputError(f"mergekit key 'models[{i}]': give {{model: PATH, parameters: {{...}}}}")
        path = _local(entry["model"], f"models[{i}].model", root)
        own = _plain(entry.get("parameters") or {}, f"models[{i}].parameters")
        if Path(path).expanduser() == Path(base).expanduser():  # the base among the models: its task vector is zero
            base_weight = float(own.get("weight", top.get("weight", 1.0)))  # only linear counts it (in the average)
            continue
        unknown = sorted(set(own) - {"weight", "density"})
        if unknown:
            raise InvalidInputError(f"mergekit key 'models[{i}].parameters.{unknown[0]}': eigenmix reads weight and density per model")
        modules.append({"path": path, "weight": float(own.get("weight", top.get("weight", 1.0)))})
        if "density" in params:
            densities.add(float(own.get("density", params["density"])))
        elif "density" in own:
            raise InvalidInputError(f"mergekit key 'models[{i}].parameters.density': {name} has no density")
    if not modules:
        raise InvalidInputError("mergekit key 'models': no model besides the base")
    if len(densities) > 1:
        raise InvalidInputError(
            f"mergekit key 'models[].parameters.density': eigenmix takes one density for all models (got {sorted(densities)})"
        )
    if densities:
        params["density"] = densities.pop()
    return modules, base_weight


def _output(raw: dict[str, Any]) -> dict[str, Any]:
    """A full model (all mergekit writes), in ``out_dtype`` or ``dtype`` where given."""
    dtype = raw.get("out_dtype") or raw.get("dtype")
    if dtype is None:
        return {"kind": "full"}
    if dtype not in DTYPES:
        key = "out_dtype" if raw.get("out_dtype") else "dtype"
        raise InvalidInputError(f"mergekit key '{key}': '{dtype}' (eigenmix writes float32, bfloat16 or float16)")
    return {"kind": "full", "dtype": DTYPES[dtype]}


def _local(ref: str, key: str, root: Path) -> str:
    if "+" in ref:
        raise InvalidInputError(f"mergekit key '{key}': '{ref}' names a LoRA to fold in; merge the adapter with eigenmix instead")
    if not (root / Path(ref).expanduser()).exists():
        raise InvalidInputError(
            f"mergekit key '{key}': '{ref}' is not a local folder or file (eigenmix reads no hub ids; download it first)"
        )
    return ref


def _plain(values: Any, key: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise InvalidInputError(f"mergekit key '{key}': must be a mapping")
    for name, value in values.items():
        if isinstance(value, list | dict):
            raise InvalidInputError(f"mergekit key '{key}.{name}': a gradient or per-tensor filter; eigenmix takes one value")
    return values
