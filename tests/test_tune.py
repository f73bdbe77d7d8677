"""Learned spectral coefficients: start = the data-free merge, gradients reach only the
coefficients, export reproduces the tuned model through PEFT, seeded runs repeat."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel

import eigenmix
from common import base_model, make_adapter
from eigenmix.compose import apply_delta, composed_factors
from eigenmix.errors import InvalidInputError
from eigenmix.io import read_lora_adapter, write_lora_adapter
from eigenmix.tune import (
    TaskData,
    TuneSettings,
    build,
    export_module,
    fit_coefficients,
    objective_value,
    objectives,
    save_coefficients,
    search_module_weights,
)

TARGETS = ["encoder.q", "encoder.v", "encoder.out"]


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    out = []
    for seed, r in ((1, 2), (2, 3), (3, 2)):
        folder = root / f"m{seed}"
        make_adapter(folder, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS), seed=seed)
        out.append(read_lora_adapter(folder, name=f"m{seed}"))
    return out


def merged_model(modules, method: str, **params) -> torch.nn.Module:
    """The tiny base with ``W0 + ΔW`` of ``eigenmix.merge`` written into its weights."""
    model = base_model()
    merged = eigenmix.merge(modules, method, **params)
    with torch.no_grad():
        for name, delta in merged.layers.items():
            model.get_submodule(name).weight += delta.dense().float()
    return model


def x_batch(seed: int = 0, rows: int = 16) -> torch.Tensor:
    return torch.randn(rows, 12, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("init", "params", "level"),
    [
        ("spectral", {"scale": 0.7}, "lambda"),
        ("spectral", {"scale": 1.3, "flatten": 0.5}, "lambda+mu"),
        ("spectral", {"scale": 1.0}, "lambda+mu"),
        ("task_arithmetic", {"scale": 0.4}, "lambda"),
    ],
)
@pytest.mark.parametrize("granularity", ["direction", "layer", "module"])
def test_start_equals_the_data_free_merge(modules, init, params, level, granularity):
    comp = build(base_model(), modules, init=init, level=level, granularity=granularity, **params)
    x = x_batch()
    with torch.no_grad():
        got, want = comp(x), merged_model(modules, init, **params)(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_hooks_leave_the_base_model_unchanged(modules):
    model = base_model()
    comp = build(model, modules, scale=2.0)
    x = x_batch()
    with torch.no_grad():
        assert not torch.allclose(model(x), base_model()(x))
        comp.detach_hooks()
        assert torch.equal(model(x), base_model()(x))


@pytest.mark.parametrize(
    ("granularity", "level"), [("direction", "lambda"), ("direction", "lambda+mu"), ("layer", "lambda"), ("module", "lambda+mu")]
)
def test_gradients_reach_the_coefficients_and_nothing_else(modules, granularity, level):
    comp = build(base_model(), modules, granularity=granularity, level=level)
    comp(x_batch()).square().sum().backward()
    trainable = {n for n, p in comp.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("lam.", "mu.")) for n in trainable)
    for name, p in comp.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert any(n.startswith("mu.") for n in trainable) == (level == "lambda+mu")


def perturb(comp, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in comp.parameters():
            if p.requires_grad:
                p.mul_(1 + 0.5 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("level", ["lambda", "lambda+mu"])
def test_export_reloaded_as_a_peft_adapter_reproduces_the_tuned_model(modules, tmp_path, level):
    comp = build(base_model(), modules, level=level, scale=0.8)
    perturb(comp)
    x = x_batch(1)
    with torch.no_grad():
        tuned = comp(x)
    folder = write_lora_adapter(export_module(comp, base_model="tiny"), tmp_path / "tuned")
    peft = PeftModel.from_pretrained(copy.deepcopy(base_model()), str(folder)).eval()
    with torch.no_grad():
        assert torch.allclose(peft(x), tuned, atol=1e-5, rtol=1e-5)


def test_coefficients_are_saved_and_summarised(modules, tmp_path):
    import json

    from safetensors.torch import load_file

    comp = build(base_model(), modules, level="lambda+mu", granularity="layer")
    perturb(comp)
    save_coefficients(comp, tmp_path, extra={"objective": "sup"})
    tensors = load_file(str(tmp_path / "coefficients.safetensors"))
    summary = json.loads((tmp_path / "coefficients.json").read_text())
    for layer in TARGETS:
        lam = comp.lambdas(layer).detach()
        assert torch.equal(tensors[f"{layer}.lambda"], lam)
        assert torch.equal(tensors[f"{layer}.mu"], comp.mus(layer).detach())
        rows = summary["layers"][layer]["modules"]
        assert sum(r["energy_share"] for r in rows.values()) == pytest.approx(1.0)
        owner = tensors[f"{layer}.owner"]
        assert rows["m2"]["lambda_mean"] == pytest.approx(float(lam[owner == 1].mean()))
    assert summary["objective"] == "sup" and summary["n_coefficients"] == comp.n_coefficients()


@given(
    m=st.integers(2, 9), n=st.integers(2, 9), d=st.integers(1, 6), j=st.integers(1, 6), seed=st.integers(0, 2**16), with_mu=st.booleans()
)
def test_apply_delta_matches_the_dense_update(m, n, d, j, seed, with_mu):
    from eigenmix.compose import LayerFactors

    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    f = LayerFactors(r(m, d), r(n, d), r(d).abs(), torch.zeros(d, dtype=torch.long), r(d), r(m, j), r(j, d), r(j))
    lam, mu, x = r(d), (r(j) if with_mu else None), r(4, n)
    middle = torch.diag(lam * f.sigma)
    dense = f.left @ middle @ f.right.T if mu is None else f.mu_left @ torch.diag(mu) @ f.mu_proj @ middle @ f.right.T
    assert torch.allclose(apply_delta(x, f, lam, mu), x @ dense.T, atol=1e-10)
    L, Rt = composed_factors(f, lam, mu)
    assert torch.allclose(L @ Rt.T, dense, atol=1e-10)


def teacher_data(modules, seed: int, rows: int = 24) -> dict[str, TaskData]:
    """Two 'tasks' whose labels come from the merge at another scale (so there is something to learn)."""
    target = merged_model(modules, "task_arithmetic", scale=1.5)
    out = {}
    for t in range(2):
        x = x_batch(seed + t, rows)
        with torch.no_grad():
            logits = target(x)
        out[f"t{t}"] = TaskData({"x": x}, logits.argmax(-1), logits)
    return out


def forward_of(comp):
    return lambda task, inputs: comp(inputs["x"])


@pytest.mark.parametrize("objective", ["sup", "entropy", "distill"])
def test_fitting_lowers_the_objective_and_is_deterministic(modules, objective):
    train, val = teacher_data(modules, 0), teacher_data(modules, 10)
    settings = TuneSettings(objective=objective, steps=30, batch_rows=8, lr=0.05, eval_every=5, patience=6, seed=3)
    runs = []
    for _ in range(2):
        comp = build(base_model(), modules, scale=0.5)
        with torch.no_grad():
            start = float(objective_value(comp, forward_of(comp), val, objective))
        result = fit_coefficients(comp, forward_of(comp), train, val, settings)
        runs.append(torch.cat([p.detach().flatten() for p in comp.parameters() if p.requires_grad]))
        assert result.best_val < start and result.history[0]["val"] == pytest.approx(start)
    assert torch.equal(runs[0], runs[1])


def test_the_best_validation_coefficients_are_kept(modules):
    train, val = teacher_data(modules, 0), teacher_data(modules, 10)
    comp = build(base_model(), modules, scale=0.5)
    result = fit_coefficients(comp, forward_of(comp), train, val, TuneSettings(steps=20, lr=0.05, batch_rows=8, eval_every=2, patience=10))
    with torch.no_grad():
        assert float(objective_value(comp, forward_of(comp), val, "sup")) == pytest.approx(result.best_val, rel=1e-6)
    assert min(h["val"] for h in result.history) == pytest.approx(result.best_val)


def test_selecting_on_accuracy_keeps_the_most_accurate_check(modules):
    train, val = teacher_data(modules, 0), teacher_data(modules, 10)
    comp = build(base_model(), modules, scale=0.5)
    settings = TuneSettings(steps=20, lr=0.05, batch_rows=8, eval_every=2, patience=10, select="accuracy")
    result = fit_coefficients(comp, forward_of(comp), train, val, settings)
    best = max(result.history, key=lambda h: (h["val_accuracy"], -h["val"]))
    assert result.best_step == best["step"] and result.best_val == best["val"]
    hits = [float((comp(d.inputs["x"]).argmax(-1) == d.labels).float().mean()) for d in val.values()]
    assert sum(hits) / len(hits) == pytest.approx(best["val_accuracy"])


def test_entropy_anchor_holds_the_marginal_and_needs_the_start_logits(modules):
    train, val = teacher_data(modules, 0), teacher_data(modules, 10)
    unanchored = {t: TaskData(d.inputs) for t, d in train.items()}
    comp = build(base_model(), modules, scale=0.5)
    with pytest.raises(InvalidInputError, match="anchor"):
        fit_coefficients(comp, forward_of(comp), unanchored, unanchored, TuneSettings(objective="entropy", anchor=1.0))
    with torch.no_grad():  # the start's own logits as the reference, as eigenmix.harness.tuning does
        start = {t: TaskData(d.inputs, teacher=comp(d.inputs["x"])) for t, d in train.items()}
        start_val = {t: TaskData(d.inputs, teacher=comp(d.inputs["x"])) for t, d in val.items()}
        assert float(objective_value(comp, forward_of(comp), start, "entropy", anchor=5.0)) == pytest.approx(
            float(objective_value(comp, forward_of(comp), start, "entropy")), rel=1e-6
        )  # no shift at the start
    settings = TuneSettings(objective="entropy", anchor=1.0, steps=20, batch_rows=8, lr=0.05, eval_every=5, patience=6)
    result = fit_coefficients(comp, forward_of(comp), start, start_val, settings)
    assert result.best_val < result.history[0]["val"]


def test_lorahub_search_lowers_the_objective_deterministically(modules):
    train = teacher_data(modules, 0)
    found = []
    for _ in range(2):
        comp = build(base_model(), modules, init="task_arithmetic", scale=0.5, granularity="module")
        with torch.no_grad():
            start = float(objective_value(comp, forward_of(comp), train, "sup"))
        result = search_module_weights(comp, forward_of(comp), train, TuneSettings(reg=0.0, seed=1), budget=40)
        assert result.best_val < start
        found.append(comp.lam["all"].detach().clone())
    assert torch.equal(found[0], found[1])


def test_objective_values():
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5]])
    assert float(objectives.entropy(logits[:1])) == pytest.approx(float(torch.log(torch.tensor(3.0))))
    assert float(objectives.distill(logits, logits)) == pytest.approx(0.0, abs=1e-7)
    p, q = torch.softmax(logits[1], 0), torch.softmax(logits[0], 0)
    assert float(objectives.distill(logits[:1], logits[1:])) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-6)
    assert float(objectives.supervised(logits[1:], torch.tensor([0]))) == pytest.approx(float(-torch.log_softmax(logits[1], 0)[0]))
    mean_p = torch.softmax(logits, -1).mean(0)  # KL(uniform ‖ the batch's mean prediction)
    uniform = torch.full((3,), 1 / 3)
    want_shift = float((uniform * (uniform / mean_p).log()).sum())
    assert float(objectives.marginal_shift(logits, torch.zeros(5, 3))) == pytest.approx(want_shift, rel=1e-6)
    assert float(objectives.marginal_shift(logits, logits)) == pytest.approx(0.0, abs=1e-7)
    assert float(objectives.loss("entropy", torch.zeros(4, 6), normalize=True)) == pytest.approx(1.0)  # uniform = log(classes)
    anchored = objectives.loss("entropy", logits, teacher=torch.zeros(2, 3), anchor=2.0, normalize=True)
    want = (objectives.entropy(logits) + 2.0 * objectives.marginal_shift(logits, torch.zeros(2, 3))) / torch.log(torch.tensor(3.0))
    assert float(anchored) == pytest.approx(float(want), rel=1e-6)


def test_bad_arguments_raise_one_clear_error(modules):
    with pytest.raises(InvalidInputError, match="flatten"):
        build(base_model(), modules, flatten=0.5)
    with pytest.raises(InvalidInputError, match="granularity"):
        build(base_model(), modules, granularity="token")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="init"):
        build(base_model(), modules, init="tsv")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="no layer"):
        build(torch.nn.Linear(12, 10), modules)
    comp = build(base_model(), modules)
    with pytest.raises(InvalidInputError, match="granularity 'module'"):
        search_module_weights(comp, forward_of(comp), teacher_data(modules, 0), TuneSettings())
    unlabeled = {"t": TaskData({"x": x_batch()})}
    with pytest.raises(InvalidInputError, match="needs labels"):
        fit_coefficients(comp, forward_of(comp), unlabeled, unlabeled, TuneSettings())


@pytest.mark.parametrize("init", ["spectral_ls", "spectral_align"])
def test_a_calibrated_start_equals_its_merge(modules, init):
    """spectral_ls keeps the modules' directions (λ from the rows); spectral_align starts from
    its aligned directions (λ = μ), the merged-model statistics fed layer by layer."""
    from eigenmix.compose import MergedGrams, gram_statistics
    from eigenmix.merging import get_method

    batches = [[{"x": x_batch(seed=10 + k, rows=8)}] for k in range(3)]

    def source():
        stats = MergedGrams if get_method(init).calibration == "merged" else gram_statistics
        return stats(base_model(), modules, batches)

    comp = build(base_model(), modules, init=init, scale=0.6, calibration=source())
    x = x_batch()
    with torch.no_grad():
        got, want = comp(x), merged_model(modules, init, scale=0.6, calibration=source())(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert comp.n_coefficients() > 0
