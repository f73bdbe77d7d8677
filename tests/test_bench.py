"""The merge benchmark: its pieces against independent references, bad data folders, and
a tiny real run (MiniLM, two tasks, a few steps) that is deterministic end to end."""

from __future__ import annotations

import json

import pytest
import torch

from common import fails_in_process, run_cli, small_data
from eigenmix.bench.cache import cache_key
from eigenmix.bench.probe import fit_probe
from eigenmix.bench.report import markdown_table
from eigenmix.data import load_tasks
from eigenmix.harness.evaluator import Evaluator, Head
from eigenmix.harness.splits import carve
from eigenmix.train import LoraRecipe


def test_validation_rows_are_carved_from_train_deterministically():
    task = load_tasks(names=["trec"])[0]
    a, b = carve(task, 64, 100, seed=0), carve(task, 64, 100, seed=0)
    assert a == b and len(a.val) == 64 and len(a.task.test) == 100
    assert len(a.task.train) + 64 == len(task.train)
    assert not {r.text for r in a.val} & {r.text for r in a.task.train}
    assert carve(task, 64, 100, seed=1).val != a.val


def test_cache_key_follows_data_and_recipe():
    task = load_tasks(names=["trec"])[0]
    recipe = {"recipe": LoraRecipe().model_dump()}
    key = cache_key(task, "adapters", recipe)
    assert key == cache_key(task, "adapters", recipe)
    assert key != cache_key(task, "adapters", {"recipe": LoraRecipe(steps=31).model_dump()})
    assert key != cache_key(carve(task, 1, 0, seed=0).task, "adapters", recipe)


def test_probe_fits_separable_data_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 4
    labels = torch.arange(90) % 3
    x = centers[labels] + torch.randn(90, 16, generator=g)
    head = fit_probe(x, labels, 3)
    assert bool(((x @ head.weight.T + head.bias).argmax(-1) == labels).all())
    again = fit_probe(x, labels, 3)
    assert torch.equal(head.weight, again.weight)


def test_evaluator_matches_the_peft_model(tmp_path):
    """W0 + ΔW written into the encoder gives PEFT's own LoRA forward."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from eigenmix.io import read_lora_adapter
    from eigenmix.train import BERT_LINEARS, load_encoder

    torch.manual_seed(0)
    encoder, _ = load_encoder()
    peft_model = get_peft_model(encoder, LoraConfig(r=4, lora_alpha=8, target_modules=BERT_LINEARS, init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    module = read_lora_adapter(tmp_path / "adapter")
    rows = load_tasks(names=["mrpc"])[0].test[:10]  # sentence pairs, different lengths
    ev = Evaluator(max_length=64, tokens_per_batch=256)
    split = ev.tokenize({"mrpc": rows})
    assert len(split.batches) > 1
    base = ev.features(split)
    ev.apply({k: d.dense() for k, d in module.layers.items()})
    merged = ev.features(split)

    reference = PeftModel.from_pretrained(load_encoder()[0], str(tmp_path / "adapter")).eval()
    pairs = [r.text_pair for r in rows]
    ids = ev.text.tokenizer([r.text for r in rows], pairs, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**ids).last_hidden_state
    mask = ids["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(merged, expected, atol=2e-5, rtol=1e-4)
    assert (merged - base).abs().max() > 1e-2  # the adapter does change the features
    ev.apply(None)
    torch.testing.assert_close(ev.features(split), base, atol=0, rtol=0)
    head = Head(torch.zeros(2, base.shape[1]), torch.tensor([0.0, 1.0]))  # always predicts class 1
    assert ev.accuracies(split, {"mrpc": head}) == {"mrpc": pytest.approx(sum(r.label == 1 for r in rows) / 10)}


def test_tasks_tokenised_together_keep_their_rows():
    tasks = load_tasks(names=["trec", "mrpc"])
    ev = Evaluator(max_length=64, tokens_per_batch=512)
    groups = {"trec": tasks[0].test[:7], "mrpc": tasks[1].test[:5]}
    together = ev.features(ev.tokenize(groups))
    apart = torch.cat([ev.features(ev.tokenize({name: rows})) for name, rows in groups.items()])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-4)


def test_markdown_bolds_the_best_merge_of_each_column():
    results = {
        "tasks": ["a", "b"],
        "individual": {"a": 0.9, "b": 0.8},
        "floor": {"a": 0.5, "b": 0.5},
        "methods": {
            "x": {"per_task": {"a": 0.8, "b": 0.4}, "avg_acc": 0.6, "avg_normalized_acc": (0.8 / 0.9 + 0.4 / 0.8) / 2},
            "y": {"per_task": {"a": 0.7, "b": 0.6}, "avg_acc": 0.65, "avg_normalized_acc": (0.7 / 0.9 + 0.6 / 0.8) / 2},
        },
    }
    results["methods"]["x"]["chosen_params"] = {"scale": 1}
    results["methods"]["y"]["chosen_params"] = {"scale": 2}
    lines = markdown_table(results).splitlines()
    assert lines[2].startswith("| individual | 90.0 | 80.0 | 85.0 | 100.0 |")
    assert lines[4] == "| y | 70.0 | **60.0** | **65.0** | **76.4** | 2 |"  # sorted by avg normalized
    assert lines[5] == "| x | **80.0** | 40.0 | 60.0 | 69.4 | 1 |"


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: (d / "trec" / "test.jsonl").unlink(), "missing split test.jsonl"),
        (lambda d: (d / "cola" / "train.jsonl").write_text(""), "is empty"),
        (lambda d: (d / "trec" / "test.jsonl").write_text('{"text": "a", "label": 0, "topic": 1}\n'), "unknown field 'topic'"),
        (lambda d: (d / "cola" / "test.jsonl").write_text('{"text": "a", "label": 7}\n'), "label 7 is out of range for 2 classes"),
    ],
)
def test_bad_data_folder_gets_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, mutate, words):
    data = small_data(tmp_path / "data")
    mutate(data)
    out = tmp_path / "results"
    code = run_cli(monkeypatch, "bench", "merge", "--data-dir", data, "--out", out, "--cache-dir", tmp_path / "cache")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and words in " ".join(err.split())
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "cache").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_unknown_method_fails_before_training(tmp_path, monkeypatch, capsys):
    data = small_data(tmp_path / "data")
    code = run_cli(monkeypatch, "bench", "merge", "--data-dir", data, "--methods", "ties,nope", "--cache-dir", tmp_path / "cache")
    assert code == 2 and "nope" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_tiny_real_run_is_deterministic(tmp_path, monkeypatch):
    """Two runs, each training its own adapters (separate caches), give the same numbers;
    a third run reuses the cache."""
    data = small_data(tmp_path / "data")
    args = ["bench", "merge", "--data-dir", data, "--methods", "task_arithmetic,ties,dare,spectral", "--steps", "3", "--val-rows", "8"]
    runs = []
    for name, cache in (("a", "c1"), ("b", "c2"), ("c", "c1")):
        assert run_cli(monkeypatch, *args, "--out", tmp_path / name, "--cache-dir", tmp_path / cache) == 0
        runs.append(json.loads((tmp_path / name / "results.json").read_text()))
    first = runs[0]
    assert first["tasks"] == ["cola", "trec"]
    assert set(first["methods"]) == {"task_arithmetic", "ties", "dare", "spectral"}
    ta = first["methods"]["task_arithmetic"]
    assert set(ta) >= {"per_task", "avg_acc", "avg_normalized_acc", "merge_seconds", "chosen_params"}
    assert ta["avg_acc"] == pytest.approx(sum(ta["per_task"].values()) / 2)
    assert ta["avg_normalized_acc"] == pytest.approx(sum(ta["per_task"][t] / first["individual"][t] for t in first["tasks"]) / 2)
    tried = [float(s) for s in ta["validation"]]
    assert len(tried) == 7 and tried[:5] == [round(0.3 * m, 6) for m in first["config"]["scale_grid"]]
    assert ta["chosen_params"]["scale"] in tried
    assert ta["validation"][f"{ta['chosen_params']['scale']:g}"] == max(ta["validation"].values())
    assert first["config"]["train_rows"] == {"cola": 40, "trec": 40}

    def numbers(result: dict) -> dict:
        kept = {k: v for k, v in result.items() if k not in ("timing", "config")}
        kept["methods"] = {m: {k: v for k, v in r.items() if k != "merge_seconds"} for m, r in result["methods"].items()}
        return kept

    assert numbers(runs[0]) == numbers(runs[1]) == numbers(runs[2])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["results.json", "results.md", "results.png"]
    assert "**" in (tmp_path / "a" / "results.md").read_text()


def test_tuned_entries_join_the_results(tmp_path, monkeypatch):
    """``--tune`` adds every tuned entry (steps cut short here), each from its merge's chosen scale."""
    from eigenmix.bench import tuned

    def short(spec):
        return spec.model_copy(update={"settings": spec.settings.model_copy(update={"steps": 2, "eval_every": 1}), "budget": 6})

    monkeypatch.setattr(tuned, "TUNED", {name: short(spec) for name, spec in tuned.TUNED.items()})
    data = small_data(tmp_path / "data")
    args = ["bench", "merge", "--data-dir", data, "--methods", "task_arithmetic,spectral", "--steps", "3", "--val-rows", "8", "--tune"]
    assert run_cli(monkeypatch, *args, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["methods"]) == ["task_arithmetic", "spectral", *tuned.TUNED]
    expected = {"spectral+tune(sup,n=64)": 36 * 16, "adamerging": 36 * 2, "lorahub(n=16)": 2}
    for name, count in expected.items():
        entry = results["methods"][name]
        assert entry["n_coefficients"] == count and entry["tune_seconds"] > 0
        assert entry["chosen_params"]["spec"]["settings"]["steps"] == 2  # the shortened entries ran, not the real ones
        assert entry["chosen_params"]["steps"] <= 2 or name.startswith("lorahub")
        start = "spectral" if name.startswith("spectral") else "task_arithmetic"
        assert entry["chosen_params"]["scale"] == results["methods"][start]["chosen_params"]["scale"]
        assert entry["avg_acc"] == pytest.approx(sum(entry["per_task"].values()) / 2)
    assert results["config"]["tuned"] == list(tuned.TUNED)


def test_calibrated_entries_through_the_script(tmp_path):
    """``--calibration-rows`` gives each calibrated method one entry per size, through the
    installed script in a fresh process, with the statistics' and the solve's seconds apart."""
    from test_cli_smoke import eigenmix, ok

    data = small_data(tmp_path / "data")
    args = ["bench", "merge", "--data-dir", data, "--methods", "regmean,spectral_align", "--calibration-rows", "4,8", "--steps", "3"]
    ok(eigenmix(*args, "--val-rows", "8", "--test-rows", "12", "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache"))
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["methods"]) == ["regmean(n=4)", "regmean(n=8)", "spectral_align(n=4)", "spectral_align(n=8)"]
    for entry in results["methods"].values():
        assert entry["calibration_seconds"] > 0 and entry["solve_seconds"] > 0
        assert f"{entry['chosen_params']['scale']:g}" in entry["validation"]
    assert results["config"]["calibration_rows"] == [4, 8]
    done = eigenmix(*args[:-2], "--calibration-rows", "4,x", "--out", tmp_path / "bad", "--cache-dir", tmp_path / "cache")
    assert done.returncode == 2 and "--calibration-rows" in done.stderr and not (tmp_path / "bad").exists()


def test_modules_of_another_kind_go_through_the_benchmark(tmp_path, monkeypatch, capsys):
    """``--kind orthogonal``: each task's module is trained orthogonal to the modules of the
    tasks before it (in ``--tasks`` order), so the run's overlap is zero (principal angles of
    90°); the kind is in the config and in the cache key, an arrival order is its own entry,
    and the trained parameters are recorded (LoRA r = 8's count)."""
    data = small_data(tmp_path / "data")
    args = ["bench", "merge", "--data-dir", data, "--methods", "task_arithmetic", "--steps", "3", "--val-rows", "8", "--test-rows", "8"]
    cache = tmp_path / "cache"
    for name, order in (("a", "trec,cola"), ("b", "cola,trec")):
        assert run_cli(monkeypatch, *args, "--kind", "orthogonal", "--tasks", order, "--out", tmp_path / name, "--cache-dir", cache) == 0
    first, second = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("a", "b"))
    assert first["config"]["kind"] == "orthogonal" and first["tasks"] == ["trec", "cola"] and second["tasks"] == ["cola", "trec"]
    for result in (first, second):
        overlap = result["overlap"]
        assert overlap["pairs"] == 1 and overlap["layers"] == 36 and overlap["chance_row"] > 0.01
        assert overlap["row_overlap"] < 1e-6 and overlap["column_overlap"] < 1e-6 and overlap["min_row_angle"] > 89.9
        assert result["trained_parameters"] == {"trec": 331_776, "cola": 331_776}  # 6 layers x (4 x 8 x 768 + 2 x 8 x 1920)
    assert len(list((cache / "adapters").iterdir())) == 4  # the first of an order is trained alone; the second against it
    unknown = fails_in_process(monkeypatch, capsys, *args, "--kind", "svd", "--out", tmp_path / "c", "--cache-dir", tmp_path / "c2")
    assert "unknown training kind 'svd' (did you mean 'svf'?" in unknown and not (tmp_path / "c2").exists()
