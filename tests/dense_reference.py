"""Independent dense reference implementations of every merge method, written from the
papers' definitions on full m × n matrices (float64). They share no code with eigenmix.

Low-rank conventions follow eigenmix's documented choices: spectra are taken over the
numerical rank (zero singular directions are undefined and left out).
"""

from __future__ import annotations

import torch
from torch import Tensor

TOL = 1e-10


def thin_svd(W: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of W restricted to its numerical rank: U (m, r), s (r,), V (n, r)."""
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    r = int((s > TOL * max(float(s[0]), 1e-300)).sum()) if s.numel() else 0
    return U[:, :r], s[:r], Vh[:r].T


def polar(M: Tensor) -> Tensor:
    """Polar factor on the range of M (a partial isometry when M is rank-deficient)."""
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    r = int((s > 1e-10 * s[0]).sum())
    return U[:, :r] @ Vh[:r]


def linear(Ws, w, scale=1.0, normalize=False):
    total = sum(wk * W for wk, W in zip(w, Ws, strict=True))
    return scale * (total / sum(w) if normalize else total)


def trim(W: Tensor, density: float) -> Tensor:
    """Keep the top ⌊density·numel⌋ entries by |value| (threshold form, no topk)."""
    k = max(1, int(density * W.numel()))
    threshold = W.abs().flatten().sort(descending=True).values[k - 1]
    return torch.where(W.abs() >= threshold, W, torch.zeros_like(W))


def reference_threshold(values: Tensor, density: float) -> float:
    """The original TIES / KnOTS code's rule: ``kthvalue(d − ⌊d·K⌋)`` of |values|, kept by ``≥``
    (all entries at K = 1)."""
    flat = values.abs().flatten()
    if density >= 1:
        return float(flat.min())
    d = flat.numel()
    return float(flat.kthvalue(d - int(d * density)).values)


def trim_global(Ws_per_task: list[list[Tensor]], density: float) -> list[list[Tensor]]:
    """Each task's tensors trimmed by one threshold over all of them (the original TIES code)."""
    out = []
    for tensors in Ws_per_task:
        t = reference_threshold(torch.cat([x.flatten() for x in tensors]), density)
        out.append([torch.where(x.abs() >= t, x, torch.zeros_like(x)) for x in tensors])
    return out


def ties(Ws, w, density, normalize=True, scale=1.0, trimmed=False):
    weighted = [wk * (W if trimmed else trim(W, density)) for wk, W in zip(w, Ws, strict=True)]
    total = sum(weighted)
    sign = torch.where(total >= 0, 1.0, -1.0).double()
    num = torch.zeros_like(Ws[0])
    den = torch.zeros_like(Ws[0])
    for wk, X in zip(w, weighted, strict=True):
        agree = (torch.sign(X) == sign).double()
        num += X * agree
        den += wk * agree
    out = num / torch.where(den == 0, torch.ones_like(den), den) if normalize else num
    return scale * out


def dare_linear(Ws, w, masks, density, scale=1.0):
    return scale * sum(wk * W * M / density for wk, W, M in zip(w, Ws, masks, strict=True))


def dare_ties(Ws, w, masks, density, normalize=True, scale=1.0):
    dropped = [W * M / density for W, M in zip(Ws, masks, strict=True)]
    return ties(dropped, w, density=1.0, normalize=normalize, scale=scale)


def magnitude_prune(Ws, w, density, scale=1.0):
    return scale * sum(wk * trim(W, density) for wk, W in zip(w, Ws, strict=True))


def iso_c(Ws, w, scale=1.0):
    U, s, V = thin_svd(linear(Ws, w))
    return scale * s.mean() * U @ V.T


def iso_cts(Ws, w, d, common_space_fraction=0.8, scale=1.0):
    K = len(Ws)
    n_task_total = round((d - int(d * common_space_fraction)) / K) * K
    n_common = d - n_task_total
    per_task = n_task_total // K
    U, s, Vh = torch.linalg.svd(linear(Ws, w), full_matrices=False)
    Uc, sc, Vc = U[:, :n_common], s[:n_common], Vh[:n_common].T
    us, ss, vs = [], [], []
    for wk, W in zip(w, Ws, strict=True):
        Wt = wk * W - Uc @ Uc.T @ (wk * W)
        Ut, st, Vth = torch.linalg.svd(Wt, full_matrices=False)
        us.append(Ut[:, :per_task])
        ss.append(st[:per_task])
        vs.append(Vth[:per_task].T)
    Uall, Vall = polar(torch.cat([*us, Uc], 1)), polar(torch.cat([*vs, Vc], 1))
    sig = torch.cat([*ss, sc])
    return scale * sig.mean() * Uall @ Vall.T


def tsv(Ws, w, scale=1.0):
    K = len(Ws)
    keep = max(1, int(min(Ws[0].shape) / K))
    us, ss, vs = [], [], []
    for wk, W in zip(w, Ws, strict=True):
        U, s, V = thin_svd(W)
        t = min(keep, s.numel())
        us.append(U[:, :t])
        ss.append(wk * s[:t])
        vs.append(V[:, :t])
    return scale * polar(torch.cat(us, 1)) @ torch.diag(torch.cat(ss)) @ polar(torch.cat(vs, 1)).T


def star(Ws, w, eta=0.4, scale=1.0):
    out = torch.zeros_like(Ws[0])
    for wk, W in zip(w, Ws, strict=True):
        U, s, V = thin_svd(W)
        r = next(i + 1 for i in range(s.numel()) if s[: i + 1].sum() >= eta * s.sum() - 1e-12)
        kept = s[:r] * s.sum() / s[:r].sum()
        out += wk * U[:, :r] @ torch.diag(kept) @ V[:, :r].T
    return scale * out / len(Ws)


def knots_ties(Ws, w, density=0.2, scale=1.0):
    """KnOTS-TIES of one layer (the reference's top-k rule, :func:`reference_threshold`)."""
    n = Ws[0].shape[1]
    U, s, Vh = torch.linalg.svd(torch.cat(Ws, 1), full_matrices=False)
    q = int((s > TOL * s[0]).sum())
    reps = [torch.diag(s[:q]) @ Vh[:q, k * n : (k + 1) * n] for k in range(len(Ws))]
    trimmed = [r for [r] in trim_global([[r] for r in reps], density)]
    return scale * U[:, :q] @ ties(trimmed, w, density, trimmed=True)


def spectral(Ws, w, flatten=0.0, scale=1.0):
    svds = [thin_svd(W) for W in Ws]
    out = torch.zeros_like(Ws[0])
    for k, (Uk, sk, Vk) in enumerate(svds):
        lam = torch.ones_like(sk)
        for i in range(sk.numel()):
            c = 0.0
            for j, (Uj, _, Vj) in enumerate(svds):
                if j != k:
                    c += float((Uj.T @ Uk[:, i]).square().sum() * (Vj.T @ Vk[:, i]).square().sum())
            lam[i] = 1.0 / (1.0 + c)
        out += w[k] * Uk @ torch.diag(lam * sk) @ Vk.T
    if flatten > 0:
        U, nu, V = thin_svd(out)
        out = U @ torch.diag(nu * (nu.mean() / nu) ** flatten) @ V.T
    return scale * out
