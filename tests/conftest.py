"""Shared test settings: quiet transformers, a hypothesis profile sized for 2 cores."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _threads_per_worker() -> None:
    """Under pytest-xdist (``make test`` runs ``-n auto``), each worker gets its share of the
    cores, and so do the processes it starts: two workers of two torch threads each on two
    cores oversubscribe them and run several times slower than one."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = share
        import torch

        torch.set_num_threads(int(share))


_threads_per_worker()

settings.register_profile("default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def minilm_adapters(tmp_path_factory):
    """Two tiny adapters (trec, cola; 3 steps) trained on all-MiniLM-L6-v2 by eigenmix.train,
    with their heads beside them, and the small data folder they were trained on."""
    from common import small_data
    from eigenmix.data import load_tasks
    from eigenmix.train import LoraRecipe, train_adapter

    root = tmp_path_factory.mktemp("minilm")
    data = small_data(root / "data", names=("trec", "cola"))
    for task in load_tasks(data, names=["trec", "cola"]):
        train_adapter(task, LoraRecipe(steps=3, batch_size=8, max_length=32, lr=5e-3, head_lr=5e-3), root / "adapters" / task.name)
    return root
