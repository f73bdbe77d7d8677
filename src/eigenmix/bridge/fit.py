"""Fit a bridge on paired anchors: each side's spectral basis, a closed-form joint start,
and the coefficients λ chosen on held-out pairs.

The seen pairs are split (seeded) into fitting pairs and ``held_out`` pairs.

1. **Choice.** For every ridge ``eps`` and ``power`` of the settings' grids: the bases and
   the start from the fitting pairs, ``λ = strength^power``, scored by top-1 retrieval of
   the held-out pairs (with the bridge's hubness correction). The best pair of values wins
   (ties: the first).
2. **Fit.** The bases and the start again on *all* the pairs, with the chosen values.
3. **Learning** (``learn``, off by default): λ and a temperature refined by Adam on the
   symmetric contrastive loss (InfoNCE) of the fitting pairs, keeping the λ with the best
   held-out top-1. On ImageNet's anchors it gains nothing over the choice
   (``benchmarks/results/bridge/results.json``, ``eigenmix bench bridge``), so the default keeps the closed form.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from eigenmix.bridge.bases import SideBasis, check_features, side_basis
from eigenmix.bridge.joint import JointStart, Start, joint_start
from eigenmix.bridge.model import Bridge, Hubness, csls, retrieval
from eigenmix.errors import InvalidInputError


class BridgeSettings(BaseModel):
    """How a bridge is fitted (recorded in ``bridge.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: Start = Field("cca", description="the closed-form joint space: procrustes or cca")
    image_rank: int = Field(384, ge=1, description="directions kept of the image side's basis")
    text_rank: int = Field(384, ge=1, description="directions kept of the text side's basis")
    eps: tuple[float, ...] = Field((1.0, 3.0, 10.0), min_length=1, description="cca's ridges tried (a share of the mean variance)")
    power: tuple[float, ...] = Field((0.5, 1.0), min_length=1, description="λ = strength^power, the powers tried (0: ones)")
    hubness: Hubness = Field("csls", description="csls: cross-domain similarity local scaling at retrieval (none: cosine)")
    csls_k: int = Field(10, ge=1, description="neighbours of csls")
    learn: bool = Field(False, description="refine λ by the contrastive loss after the choice")
    steps: int = Field(300, ge=0, description="Adam steps on the contrastive loss")
    lr: float = Field(0.01, gt=0, description="Adam's learning rate")
    held_out: float = Field(0.125, gt=0, lt=1, description="share of the pairs held out for early stopping")
    eval_every: int = Field(10, ge=1, description="steps between held-out checks")
    patience: int = Field(10, ge=1, description="checks without a gain before stopping")
    seed: int = Field(0, description="seeds the held-out split")


def split_pairs(n: int, held_out: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded indices ``(fit, held)`` of ``n`` pairs."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = max(1, round(held_out * n))
    if n - held < 2:
        raise InvalidInputError(f"{n} pairs leave fewer than 2 to fit after {held} held out")
    return order[held:].sort().values, order[:held].sort().values


def fit_bridge(X: Tensor, Y: Tensor, settings: BridgeSettings, on_step: Callable[[int, float], None] | None = None) -> Bridge:
    """A bridge from paired anchors: image side ``X (n, d₁)``, text side ``Y (n, d₂)``, row ``i`` of each a pair."""
    check_features(X, "image anchors")
    check_features(Y, "text anchors")
    if X.shape[0] != Y.shape[0]:
        raise InvalidInputError(f"{X.shape[0]} image anchors but {Y.shape[0]} text anchors: each row is a pair")
    start_time = time.perf_counter()
    fit, held = split_pairs(X.shape[0], settings.held_out, settings.seed)
    grid: dict[str, float] = {}
    for eps in settings.eps:
        for power in settings.power:
            ja, jb, lam = _closed_form(X[fit], Y[fit], X[held], Y[held], settings, eps, power)
            grid[f"eps={eps:g}, power={power:g}"] = retrieval(_sim(ja, jb, lam, settings))[0]
    eps, power = max(((e, p) for e in settings.eps for p in settings.power), key=lambda ep: grid[f"eps={ep[0]:g}, power={ep[1]:g}"])
    info: dict = {"steps": 0, "best_step": 0}
    if settings.learn and settings.steps > 0:  # λ learned on the fitting pairs' bridge, stopped on the held-out ones
        image, text, start = _bases_and_start(X[fit], Y[fit], settings, eps)
        ja, jb = image.coordinates(X) @ start.P_a, text.coordinates(Y) @ start.P_b
        lam, info = _learn(ja, jb, fit, held, start.strength.clamp(min=1e-12) ** power, settings, on_step)
    else:
        image, text, start = _bases_and_start(X, Y, settings, eps)
        lam = start.strength.clamp(min=1e-12) ** power
    record = {
        "settings": settings.model_dump(mode="json"),
        "pairs": {"all": int(X.shape[0]), "fit": len(fit), "held_out": len(held)},
        "chosen": {"eps": eps, "power": power},
        "held_out_top1": grid,
        "fit_seconds": round(time.perf_counter() - start_time, 2),
        **info,
    }
    return Bridge(image, text, start.P_a, start.P_b, lam, record)


def _bases_and_start(X: Tensor, Y: Tensor, settings: BridgeSettings, eps: float) -> tuple[SideBasis, SideBasis, JointStart]:
    image = side_basis(X, min(settings.image_rank, X.shape[0] - 1, X.shape[1]))
    text = side_basis(Y, min(settings.text_rank, Y.shape[0] - 1, Y.shape[1]))
    return image, text, joint_start(settings.start, image.coordinates(X), text.coordinates(Y), eps)


def _closed_form(
    X: Tensor, Y: Tensor, Xq: Tensor, Yq: Tensor, settings: BridgeSettings, eps: float, power: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Joint coordinates of ``Xq``, ``Yq`` and λ under the closed form fitted on ``X``, ``Y``."""
    image, text, start = _bases_and_start(X, Y, settings, eps)
    return image.coordinates(Xq) @ start.P_a, text.coordinates(Yq) @ start.P_b, start.strength.clamp(min=1e-12) ** power


def _sim(ja: Tensor, jb: Tensor, lam: Tensor, settings: BridgeSettings) -> Tensor:
    S = F.normalize(ja * lam, dim=-1) @ F.normalize(jb * lam, dim=-1).T
    return csls(S, settings.csls_k) if settings.hubness == "csls" else S


def _learn(
    ja: Tensor, jb: Tensor, fit: Tensor, held: Tensor, lam0: Tensor, settings: BridgeSettings,
    on_step: Callable[[int, float], None] | None,
) -> tuple[Tensor, dict]:  # fmt: skip
    """Adam on λ and a temperature; the λ with the best held-out top-1 (ties: the earlier)."""
    lam = torch.nn.Parameter(lam0.clone())
    log_t = torch.nn.Parameter(torch.tensor(-2.5, dtype=lam0.dtype))  # temperature e^-2.5 ≈ 0.08
    optimizer = torch.optim.Adam([lam, log_t], lr=settings.lr)
    labels = torch.arange(len(fit))
    best, best_step, waited = retrieval(_sim(ja[held], jb[held], lam0, settings))[0], 0, 0
    best_lam = lam0.clone()
    step = 0
    for step in range(1, settings.steps + 1):
        logits = F.normalize(ja[fit] * lam, dim=-1) @ F.normalize(jb[fit] * lam, dim=-1).T / log_t.exp()
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
        if step % settings.eval_every == 0:
            with torch.no_grad():
                score = retrieval(_sim(ja[held], jb[held], lam, settings))[0]
            if score > best:
                best, best_step, best_lam, waited = score, step, lam.detach().clone(), 0
            else:
                waited += 1
                if waited >= settings.patience:
                    break
    return best_lam, {"steps": step, "best_step": best_step, "temperature": float(log_t.detach().exp())}
