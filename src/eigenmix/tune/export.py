"""Fixed coefficients → a merged module (for the merge writers) and a readable record.

The merged module holds, per layer, the exact SVD of ``ΔW(λ, μ) = L Rtᵀ`` (rank ≤ Σ r_k),
computed from the factors without forming ``ΔW``; ``eigenmix.io.write_lora_adapter``
writes it as a PEFT adapter. The coefficients are saved as ``coefficients.safetensors``
(``<layer>.lambda`` ``(D,)``, ``<layer>.lambda0``, ``<layer>.owner``, ``<layer>.mu``) and
summarised per module and layer in ``coefficients.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import save_file

from eigenmix.compose import Composition, composed_factors
from eigenmix.errors import InvalidInputError
from eigenmix.modules import Module, SpectralDelta
from eigenmix.spectral import default_rtol, factored_svd, numerical_rank


def export_module(comp: Composition, *, name: str = "tuned", base_model: str | None = None) -> Module:
    """The composition with its current coefficients as one module of spectral deltas."""
    layers = {}
    with torch.no_grad():
        for layer, f in comp.factors.items():
            mu = comp.mus(layer)
            L, Rt = composed_factors(f, comp.lambdas(layer).double(), None if mu is None else mu.double())
            svd = factored_svd(L, Rt.T, dtype=torch.float64)
            dtype = f.left.dtype
            svd = svd.truncate(max(numerical_rank(svd.S, default_rtol(dtype)), 1))
            layers[layer] = SpectralDelta(svd.U.to(dtype), svd.S.to(dtype), svd.V.to(dtype), f.kernel)
    return Module(name, layers, base_model=base_model)


def coefficient_tensors(comp: Composition) -> dict[str, torch.Tensor]:
    """Every layer's λ (``(D,)``, effective: tied factors expanded), λ0, owner and μ."""
    out = {}
    with torch.no_grad():
        for layer, f in comp.factors.items():
            out[f"{layer}.lambda"] = comp.lambdas(layer).detach().float().contiguous()
            out[f"{layer}.lambda0"] = f.lam0.float()
            out[f"{layer}.sigma"] = f.sigma.float()
            out[f"{layer}.owner"] = f.owner
            mu = comp.mus(layer)
            if mu is not None:
                out[f"{layer}.mu"] = mu.detach().float().contiguous()
    return out


def coefficient_summary(comp: Composition) -> dict:
    """Per layer, per module: how many directions, and their λ (mean, min, max) beside λ0's
    mean and the module's share of the composed update's energy ``Σ (λσ)² / Σ_all (λσ)²``."""
    layers = {}
    with torch.no_grad():
        for layer, f in comp.factors.items():
            lam = comp.lambdas(layer).double()
            energy = (lam * f.sigma).square()
            rows = {}
            for k, name in enumerate(comp.module_names):
                own = f.owner == k
                if bool(own.any()):
                    rows[name] = {
                        "directions": int(own.sum()),
                        "lambda_mean": float(lam[own].mean()),
                        "lambda_min": float(lam[own].min()),
                        "lambda_max": float(lam[own].max()),
                        "lambda0_mean": float(f.lam0[own].mean()),
                        "energy_share": float(energy[own].sum() / energy.sum().clamp(min=1e-300)),
                    }
            entry: dict = {"modules": rows}
            mu = comp.mus(layer)
            if mu is not None:
                entry["mu"] = {"n": mu.numel(), "mean": float(mu.mean()), "min": float(mu.min()), "max": float(mu.max())}
            layers[layer] = entry
    return {
        "modules": list(comp.module_names), "granularity": comp.granularity, "level": comp.level,
        "n_coefficients": comp.n_coefficients(), "layers": layers,
    }  # fmt: skip


def save_coefficients(comp: Composition, folder: Path | str, extra: dict | None = None) -> None:
    """Write ``coefficients.safetensors`` and ``coefficients.json`` into ``folder``."""
    folder = Path(folder)
    save_file(coefficient_tensors(comp), str(folder / "coefficients.safetensors"), metadata={"format": "eigenmix-coefficients"})
    (folder / "coefficients.json").write_text(json.dumps({**coefficient_summary(comp), **(extra or {})}, indent=2) + "\n")


class _ModuleRow(BaseModel):
    directions: int
    lambda_mean: float
    lambda_min: float
    lambda_max: float
    lambda0_mean: float
    energy_share: float


class _MuRow(BaseModel):
    n: int
    mean: float
    min: float
    max: float


class _LayerRow(BaseModel):
    modules: dict[str, _ModuleRow]
    mu: _MuRow | None = None


class CoefficientSummary(BaseModel):
    """The shape of ``coefficients.json`` (what :func:`coefficient_summary` writes)."""

    modules: list[str]
    granularity: str
    level: str
    n_coefficients: int
    layers: dict[str, _LayerRow]


def read_coefficient_summary(path: Path) -> dict:
    """``coefficients.json`` of a tune output, checked; one :class:`InvalidInputError` line if
    it is not one."""
    try:
        return CoefficientSummary.model_validate_json(path.read_bytes()).model_dump(exclude_none=True)
    except (ValidationError, OSError) as err:
        first = err.errors()[0] if isinstance(err, ValidationError) else {"loc": (), "msg": str(err)}
        where = ".".join(str(p) for p in first["loc"])
        what = f"{where}: {first['msg']}" if where else first["msg"]
        raise InvalidInputError(f"{path}: not a coefficients summary of eigenmix tune ({what})") from None
