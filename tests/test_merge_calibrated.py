"""The calibrated merges (regmean, regmean_pp, lot, spectral_ls, spectral_align) against the
authors' RegMean code, independent dense formulas and brute-force least squares, and the
calibration statistics against dense Grams of tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import eigenmix
from dense_reference import thin_svd
from eigenmix.compose.grams import MergedGrams, OwnGrams, block_of, gram_statistics
from eigenmix.errors import InvalidInputError
from eigenmix.merging.methods.spectral import spectral_coefficients
from eigenmix.merging.methods.spectral_align import aligned_spectrum
from eigenmix.merging.statistics import Grams
from eigenmix.modules import DenseDelta, LowRankDelta, Module, layer_spectra

FIXTURE = Path(__file__).parent / "fixtures" / "regmean_reference.json"
T = torch.tensor


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("case", range(6))
def test_regmean_matches_the_reference_code(case):
    """bloomberg/dataless-model-merging's avg_merge (run unmodified, fixture): full weights;
    eigenmix merges the deltas from the base and adds them back (the same maths)."""
    c = json.loads(FIXTURE.read_text())["cases"][case]
    base = {k: _t(v) for k, v in c["base_params"].items()}
    modules = [Module(f"m{i}", {k: DenseDelta(_t(v) - base[k]) for k, v in model.items()}) for i, model in enumerate(c["models"])]
    grams = Grams([{f"{layer}.weight": _t(g) for layer, g in per.items()} for per in c["grams"]])
    merged = eigenmix.merge(modules, "regmean", alpha=c["alpha"], scale=1.0, calibration=grams)
    for name, expected in c["merged"].items():
        got = base[name] + merged.layers[name].dense()
        assert torch.allclose(got, _t(expected), rtol=0, atol=1e-10), (case, name)


def _gram(n: int, tokens: int, g: torch.Generator) -> torch.Tensor:
    X = torch.randn(tokens, n, generator=g, dtype=torch.float64)
    return X.T @ X


def _dense_regmean(deltas, w, grams, others, alpha, normalize="mean"):
    def shrink(G):
        return alpha * G + (1 - alpha) * torch.diag(torch.diag(G))

    norm = [shrink(G / (n if normalize == "mean" else 1)) for G, n in grams]
    rest = [shrink(G / (n if normalize == "mean" else 1)) for G, n in others]
    S = sum(norm) + sum(rest, torch.zeros_like(norm[0]))
    num = sum(wk * D @ G for wk, D, G in zip(w, deltas, norm, strict=True))
    return num @ (torch.linalg.pinv(S, hermitian=True) if normalize == "sum" else torch.linalg.inv(S))


@given(
    k=st.integers(1, 4), m=st.integers(2, 12), n=st.integers(2, 12), alpha=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**20), missing=st.booleans(),
)  # fmt: skip
def test_factored_regmean_equals_the_dense_formula(k, m, n, alpha, seed, missing):
    """ΔW* = (Σ w_k ΔW_k G̃_k)(Σ_j G̃_j)⁻¹, G̃ the per-token mean Gram with α on its
    off-diagonal; a module that lacks layer b still enters its summed Gram."""
    g = torch.Generator().manual_seed(seed)
    ranks = [int(torch.randint(1, 4, (), generator=g)) for _ in range(k)]
    w = [float(x) for x in torch.rand(k, generator=g) + 0.5]
    tokens = [int(torch.randint(n + 1, 3 * n + 2, (), generator=g)) for _ in range(k)]
    layers = ["a", "b"]
    deltas = {
        layer: [LowRankDelta(torch.randn(m, r, generator=g, dtype=torch.float64), torch.randn(r, n, generator=g, dtype=torch.float64), 0.5)
                for r in ranks]
        for layer in layers
    }  # fmt: skip
    has_b = [not (missing and i == 0) for i in range(k)]
    if not any(has_b):
        has_b[0] = True
    modules = [Module(f"m{i}", {"a": deltas["a"][i], **({"b": deltas["b"][i]} if has_b[i] else {})}) for i in range(k)]
    grams = [{layer: _gram(n, tokens[i], g) for layer in layers} for i in range(k)]
    source = Grams(grams, [dict.fromkeys(layers, tokens[i]) for i in range(k)])
    merged = eigenmix.merge(modules, "regmean", weights=w, alpha=alpha, scale=0.7, calibration=source)
    for layer in layers:
        members = [i for i in range(k) if layer == "a" or has_b[i]]
        dense = _dense_regmean(
            [deltas[layer][i].dense() for i in members], [w[i] for i in members], [(grams[i][layer], tokens[i]) for i in members],
            [(grams[i][layer], tokens[i]) for i in range(k) if i not in members], alpha,
        )  # fmt: skip
        got = merged.layers[layer].dense()
        assert torch.linalg.norm(got - 0.7 * dense) <= 1e-6 * max(float(torch.linalg.norm(dense)), 1e-12)
        assert merged.layers[layer].rank <= sum(ranks)


def test_lot_is_the_summed_gram_least_squares_with_the_pseudo_inverse():
    g = torch.Generator().manual_seed(3)
    m, n = 7, 9
    deltas = [LowRankDelta(torch.randn(m, 2, generator=g, dtype=torch.float64), torch.randn(2, n, generator=g, dtype=torch.float64))
              for _ in range(3)]  # fmt: skip
    tokens = [3, 2, 2]  # fewer tokens than inputs: the summed Gram is singular
    grams = [_gram(n, t, g) for t in tokens]
    merged = eigenmix.merge([Module(f"m{i}", {"l": d}) for i, d in enumerate(deltas)], "lot",
                            calibration=Grams([{"l": G} for G in grams], [{"l": t} for t in tokens]))  # fmt: skip
    dense = _dense_regmean([d.dense() for d in deltas], [1.0] * 3, list(zip(grams, tokens, strict=True)), [], 1.0, "sum")
    assert torch.allclose(merged.layers["l"].dense(), dense, atol=1e-8)


def _brute_force_ls(deltas, w, tokens_X, others_X, ridge):
    """The spectral_ls objective solved on dense rank-one matrices: λ minimising
    Σ_j ‖(Σ_a λ_a d_a − w_j ΔW_j) X_jᵀ‖² / N_j + ρ̃ ‖λ − λ0‖² (d_a = w_k σ_ki u_ki v_kiᵀ)."""
    dirs = []
    for wk, D in zip(w, deltas, strict=True):
        U, s, V = thin_svd(D)
        dirs += [wk * s[i] * torch.outer(U[:, i], V[:, i]) for i in range(s.numel())]
    rows, target = [], []
    for j, X in enumerate(tokens_X + others_X):
        scale = X.shape[0] ** -0.5
        rows.append(torch.stack([(d @ X.T).reshape(-1) * scale for d in dirs], dim=1))
        aim = w[j] * deltas[j] @ X.T if j < len(deltas) else torch.zeros(deltas[0].shape[0], X.shape[0], dtype=torch.float64)
        target.append(aim.reshape(-1) * scale)
    A, y = torch.cat(rows), torch.cat(target)
    layer = layer_spectra([DenseDelta(D) for D in deltas], w)
    lam0 = torch.cat(spectral_coefficients(layer)[0])
    rho = ridge * float((A.T @ A).diagonal().mean())
    A = torch.cat([A, rho**0.5 * torch.eye(len(dirs), dtype=A.dtype)])
    y = torch.cat([y, rho**0.5 * lam0])
    lam = torch.linalg.lstsq(A, y[:, None], driver="gelsd").solution[:, 0]
    return sum(lam[a] * d for a, d in enumerate(dirs))


@pytest.mark.parametrize("ridge", [0.0, 0.05])
@pytest.mark.parametrize("seed", range(4))
def test_spectral_ls_equals_brute_force_least_squares(seed, ridge):
    g = torch.Generator().manual_seed(seed)
    m, n, k = 8, 10, 3
    deltas = [torch.randn(m, 2, generator=g, dtype=torch.float64) @ torch.randn(2, n, generator=g, dtype=torch.float64) for _ in range(k)]
    deltas[1][:, :3] += deltas[0][:, :3]  # shared structure: the directions interfere
    w = [1.0, 0.8, 1.3]
    X = [torch.randn(int(torch.randint(5, 20, (), generator=g)), n, generator=g, dtype=torch.float64) for _ in range(k + 1)]
    grams = [{"l": x.T @ x, "x": torch.eye(2, dtype=torch.float64)} for x in X]
    counts = [{"l": x.shape[0], "x": 1} for x in X]
    modules = [Module(f"m{i}", {"l": DenseDelta(D)}) for i, D in enumerate(deltas)] + [Module("other", {"x": DenseDelta(torch.ones(2, 2))})]
    merged = eigenmix.merge(modules, "spectral_ls", weights=[*w, 1.0], ridge=ridge, scale=1.0, calibration=Grams(grams, counts))
    expected = _brute_force_ls(deltas, w, X[:k], X[k:], ridge)
    got = merged.layers["l"].dense()
    assert torch.linalg.norm(got - expected) <= 1e-6 * float(torch.linalg.norm(expected))


def test_spectral_ls_is_each_expert_when_modules_and_inputs_do_not_meet():
    """Orthogonal column spaces, each task's inputs orthogonal to the other modules' row
    spaces, no ridge: the exact fit is every λ = 1 (the plain sum of the experts)."""
    g = torch.Generator().manual_seed(0)
    Qm, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    Qn, _ = torch.linalg.qr(torch.randn(15, 15, generator=g, dtype=torch.float64))
    deltas, grams = [], []
    for k in range(3):
        U, V = Qm[:, 3 * k : 3 * k + 2], Qn[:, 5 * k : 5 * k + 2]
        deltas.append(U @ torch.diag(T([2.0 + k, 0.5], dtype=torch.float64)) @ V.T)
        X = torch.randn(20, 5, generator=g, dtype=torch.float64) @ Qn[:, 5 * k : 5 * k + 5].T  # inputs in module k's block only
        grams.append({"l": X.T @ X})
    modules = [Module(f"m{i}", {"l": DenseDelta(D)}) for i, D in enumerate(deltas)]
    merged = eigenmix.merge(modules, "spectral_ls", ridge=0.0, calibration=Grams(grams))
    assert torch.allclose(merged.layers["l"].dense(), sum(deltas), atol=1e-10)


def _family(seed: int, k: int = 3, m: int = 9, n: int = 11):
    g = torch.Generator().manual_seed(seed)
    deltas = [LowRankDelta(torch.randn(m, 2, generator=g, dtype=torch.float64), torch.randn(2, n, generator=g, dtype=torch.float64))
              for _ in range(k)]  # fmt: skip
    grams = [{"l": _gram(n, 30, g)} for _ in range(k)]
    return [Module(f"m{i}", {"l": d}) for i, d in enumerate(deltas)], grams


def test_spectral_align_without_flattening_is_the_regression_and_its_shares_add_up():
    modules, grams = _family(1)
    own = eigenmix.merge(modules, "regmean", alpha=0.9, calibration=Grams(grams))
    aligned = eigenmix.merge(modules, "spectral_align", alpha=0.9, flatten=0.0, calibration=Grams(grams))
    assert torch.allclose(aligned.layers["l"].dense(), own.layers["l"].dense(), atol=1e-10)
    layer = layer_spectra([m.layers["l"] for m in modules], [1.0] * 3)
    spec = aligned_spectrum(layer, Grams(grams).layer("l", [0, 1, 2]), 0.9, 1.0)
    assert torch.allclose(spec.shares.sum(0), torch.ones(spec.nu.numel(), dtype=torch.float64), atol=1e-10)
    assert torch.allclose(spec.mu * spec.nu, spec.nu.mean().expand_as(spec.nu), atol=1e-10)  # β = 1: one response
    flat = eigenmix.merge(modules, "spectral_align", alpha=0.9, flatten=1.0, calibration=Grams(grams)).layers["l"]
    S = sum(G["l"] for G in grams) * 0.9 + 0.1 * torch.diag(sum(torch.diag(G["l"]) for G in grams))
    C = torch.linalg.cholesky(S)
    responses = torch.linalg.svdvals(flat.dense() @ C)[: spec.nu.numel()]
    assert torch.allclose(responses, responses[0].expand_as(responses), rtol=1e-8)
    assert flat.rank <= 6


def test_a_calibrated_method_without_statistics_and_statistics_without_one_are_refused():
    modules, grams = _family(2)
    with pytest.raises(InvalidInputError, match="needs calibration data"):
        eigenmix.merge(modules, "regmean")
    with pytest.raises(InvalidInputError, match="uses no calibration"):
        eigenmix.merge(modules, "task_arithmetic", calibration=Grams(grams))
    with pytest.raises(InvalidInputError, match="merged model's inputs"):
        eigenmix.merge(modules, "regmean_pp", calibration=Grams(grams))
    with pytest.raises(InvalidInputError, match="must be Grams"):
        eigenmix.merge(modules, "regmean", calibration={"l": grams})
    with pytest.raises(InvalidInputError, match=r"statistics for 2 module\(s\)"):
        eigenmix.merge(modules, "regmean", calibration=Grams(grams[:2]))


class Blocks(nn.Module):
    """Two blocks of two linears, a residual and a non-linearity: a transformer's shape."""

    def __init__(self, n: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.ModuleList(nn.ModuleDict({"a": nn.Linear(n, n), "b": nn.Linear(n, n)}) for _ in range(2))
        self.double()

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.layer:
            x = x + block["b"](torch.tanh(block["a"](x)))
        return x


def _dense_block_inputs(model: Blocks, deltas_by_block: list[dict[str, torch.Tensor]], x: torch.Tensor, mask: torch.Tensor):
    """Each linear's input with the given deltas added (dense), padding rows removed."""
    seen = {}
    h = x
    for b, block in enumerate(model.layer):
        d = deltas_by_block[b]
        wa = block["a"].weight + d.get(f"layer.{b}.a", 0)
        wb = block["b"].weight + d.get(f"layer.{b}.b", 0)
        seen[f"layer.{b}.a"] = h[mask.bool()]
        inner = torch.tanh(h @ wa.T + block["a"].bias)
        seen[f"layer.{b}.b"] = inner[mask.bool()]
        h = h + inner @ wb.T + block["b"].bias
    return seen


def _blocks_family():
    g = torch.Generator().manual_seed(5)
    names = [f"layer.{b}.{x}" for b in range(2) for x in "ab"]
    modules = [
        Module(f"m{k}", {name: LowRankDelta(0.3 * torch.randn(6, 2, generator=g, dtype=torch.float64),
                                            torch.randn(2, 6, generator=g, dtype=torch.float64)) for name in names})
        for k in range(2)
    ]  # fmt: skip
    batches = []
    for _ in range(2):
        x = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
        mask = torch.ones(3, 4, dtype=torch.long)
        mask[0, 2:] = 0
        batches.append([{"x": x, "attention_mask": mask}])
    return names, modules, batches


def test_gram_statistics_are_the_dense_grams_of_each_module_alone():
    model = Blocks()
    names, modules, batches = _blocks_family()
    stats = gram_statistics(model, modules, batches)
    for k, module in enumerate(modules):
        dense = {b: {n: module.layers[n].dense() for n in names if n.startswith(f"layer.{b}.")} for b in range(2)}
        batch = batches[k][0]
        seen = _dense_block_inputs(model, [dense[0], dense[1]], batch["x"], batch["attention_mask"])
        for name in names:
            assert torch.allclose(stats.grams[k][name], seen[name].T @ seen[name], atol=1e-10)
            assert stats.tokens[k][name] == int(batch["attention_mask"].sum())


def test_merged_grams_follow_the_merged_earlier_blocks_and_the_own_current_block():
    """RegMean++ block by block against a dense computation: block 0 from each model alone,
    block 1 from the merged block 0 and the model's own block 1."""
    model = Blocks()
    names, modules, batches = _blocks_family()
    source = MergedGrams(model, modules, batches)
    merged = eigenmix.merge(modules, "regmean_pp", alpha=1.0, scale=0.5, calibration=source)
    block0 = {n: 2 * merged.layers[n].dense() for n in names[:2]}  # the merge at scale 1
    for k, module in enumerate(modules):
        own = {n: module.layers[n].dense() for n in names}
        batch = batches[k][0]
        seen = _dense_block_inputs(model, [block0, {n: own[n] for n in names[2:]}], batch["x"], batch["attention_mask"])
        got = source.layer("layer.1.a", [0, 1]).grams[k]
        assert torch.allclose(got, seen["layer.1.a"].T @ seen["layer.1.a"], atol=1e-10)
    # the first block's statistics are those of each model alone (what regmean uses)
    plain = eigenmix.merge(modules, "regmean", alpha=1.0, scale=0.5, calibration=gram_statistics(model, modules, batches))
    for name in names[:2]:
        assert torch.allclose(merged.layers[name].dense(), plain.layers[name].dense(), atol=1e-10)
    assert block_of("encoder.layer.11.attention.self.query") == "encoder.layer.11"


def test_sketched_statistics_solve_inside_the_modules_row_space():
    model = Blocks()
    names, modules, batches = _blocks_family()
    sketched = gram_statistics(model, modules, batches, sketch_above=4)
    full = gram_statistics(model, modules, batches)
    for name in names:
        B = sketched.bases[name]
        assert B.shape[1] <= 4
        assert torch.allclose(sketched.grams[0][name], B.T @ full.grams[0][name] @ B, atol=1e-10)
    merged = eigenmix.merge(modules, "regmean", calibration=sketched).layers[names[0]]
    B = sketched.bases[names[0]]
    assert torch.allclose(merged.dense() @ B @ B.T, merged.dense(), atol=1e-10)  # rows stay in span B


def test_statistics_of_the_wrong_kind_size_or_sign_are_refused():
    model = Blocks()
    names, modules, batches = _blocks_family()
    with pytest.raises(InvalidInputError, match="takes the own model's inputs"):
        eigenmix.merge(modules, "regmean", calibration=MergedGrams(model, modules, batches))
    small = [{n: torch.eye(5, dtype=torch.float64) for n in names} for _ in modules]
    with pytest.raises(InvalidInputError, match=r"a Gram of shape \(5, 5\)"):
        eigenmix.merge(modules, "regmean", calibration=Grams(small))
    zero = [{n: torch.zeros(6, 6, dtype=torch.float64) for n in names} for _ in modules]
    with pytest.raises(InvalidInputError, match="is zero"):
        eigenmix.merge(modules, "regmean", calibration=Grams(zero))
    with pytest.raises(InvalidInputError, match="negative diagonal"):
        eigenmix.merge(modules, "regmean", calibration=Grams([{n: -torch.eye(6, dtype=torch.float64) for n in names} for _ in modules]))
    with pytest.raises(InvalidInputError, match="dict of tensors"):
        gram_statistics(model, modules, [["not a batch"], ["not a batch"]])
    with pytest.raises(InvalidInputError, match="could not run a calibration batch"):
        gram_statistics(model, modules, [[{"y": torch.zeros(2, 6)}], [{"y": torch.zeros(2, 6)}]])


def test_own_statistics_block_by_block_equal_the_whole_pass():
    model = Blocks()
    names, modules, batches = _blocks_family()
    whole = eigenmix.merge(modules, "regmean", calibration=gram_statistics(model, modules, batches))
    source = OwnGrams(model, modules, batches, memory=0)  # nothing fits: block by block
    assert not source.whole and OwnGrams(model, modules, batches).whole
    blocks = eigenmix.merge(modules, "regmean", calibration=source)
    one_pass = eigenmix.merge(modules, "regmean", calibration=OwnGrams(model, modules, batches))
    for name in names:
        assert torch.allclose(whole.layers[name].dense(), blocks.layers[name].dense(), atol=1e-12)
        assert torch.allclose(whole.layers[name].dense(), one_pass.layers[name].dense(), atol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_a_sketch_is_regmean_restricted_to_the_modules_row_space(alpha):
    """With the full Gram's diagonal kept, the sketched solve is RegMean's objective (the
    shrunk full Grams) over the updates whose rows lie in span B: (Σ ΔW_k G̃_k B)(Bᵀ S B)⁻¹ Bᵀ."""
    model = Blocks()
    names, modules, batches = _blocks_family()
    sketched = gram_statistics(model, modules, batches, sketch_above=4)
    full = gram_statistics(model, modules, batches)
    merged = eigenmix.merge(modules, "regmean", alpha=alpha, calibration=sketched)
    for name in names:
        B = sketched.bases[name]
        G = [full.grams[k][name] / full.tokens[k][name] for k in range(2)]
        G = [alpha * g + (1 - alpha) * torch.diag(torch.diag(g)) for g in G]
        num = sum(modules[k].layers[name].dense() @ G[k] @ B for k in range(2))
        expected = num @ torch.linalg.inv(B.T @ sum(G) @ B) @ B.T
        assert torch.allclose(merged.layers[name].dense(), expected, atol=1e-10)
