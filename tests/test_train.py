"""Real training on all-MiniLM-L6-v2 (a few steps): the adapter is a PEFT adapter that
eigenmix reads, training is deterministic, and the per-task seeds differ."""

from __future__ import annotations

import json

import pytest

from eigenmix.data import load_tasks
from eigenmix.io import read_lora_adapter
from eigenmix.train import MINILM_ID, LoraRecipe, evaluate_adapter, train_adapter


def test_short_training_is_deterministic_and_readable(tmp_path):
    task = load_tasks(names=["trec"])[0]
    recipe = LoraRecipe(steps=2, batch_size=8, max_length=32)
    first = train_adapter(task, recipe, tmp_path / "a")
    train_adapter(task, recipe, tmp_path / "b")
    assert first["final_loss"] > 0
    a = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == MINILM_ID
    module = read_lora_adapter(tmp_path / "a")
    assert len(module.layers) == 36 and all(d.rank == 8 for d in module.layers.values())
    assert not module.extras  # the head lives beside the adapter, not in it
    acc = evaluate_adapter(tmp_path / "a", task, limit=32, max_length=32)
    assert acc == pytest.approx(independent_accuracy(tmp_path / "a", task.test[:32], 32))


def independent_accuracy(folder, rows, max_length) -> float:
    """The adapter through PEFT and the head by hand, one row at a time (no batching, no
    padding, no eigenmix code): the share of rows predicted right."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from eigenmix.train import minilm_path

    model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(minilm_path())), str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    head = load_file(str(folder / "head.safetensors"))
    right = 0
    with torch.no_grad():
        for row in rows:
            ids = tokenizer(row.text, truncation=True, max_length=max_length, return_tensors="pt")
            pooled = model(**ids).last_hidden_state[0].mean(0)
            right += int(int((head["weight"] @ pooled + head["bias"]).argmax()) == row.label)
    return right / len(rows)


def test_tasks_get_different_initial_lora_A(tmp_path):
    tasks = load_tasks(names=["sst2", "cola"])
    recipe = LoraRecipe(steps=1, batch_size=4, max_length=16, lr=1e-12, head_lr=1e-12)
    modules = []
    for task in tasks:
        train_adapter(task, recipe, tmp_path / task.name)
        modules.append(read_lora_adapter(tmp_path / task.name))
    layer = "encoder.layer.0.attention.self.query"
    assert not bool((modules[0].layers[layer].A == modules[1].layers[layer].A).all())
