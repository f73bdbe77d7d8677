"""Forward time of a composed model over the base model's at K = 2…32 modules, beside PEFT
Arrow and PEFT's mixed batch at the same K, in one run (ratios; the machine is noisy).

Beyond the benchmark's 8 trained adapters the library holds perturbed copies: copy c of
adapter j has ``A + 0.1·std(A)·ε`` and ``B + 0.1·std(B)·ε`` (seeded Gaussian ε), the same
ranks and layers, so it costs what a trained adapter costs. Each entry is timed on one
padded batch of ``cost_rows`` test rows drawn across the tasks; the median of
``cost_repeats`` passes after one warm-up pass is reported.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from eigenmix.bench.compose.passes import one_batch
from eigenmix.bench.compose.routing import peft_arrow_model
from eigenmix.bench.compose.settings import ComposeSettings
from eigenmix.compose import Library, RoutedModel, Router
from eigenmix.compose.routers import GivenRouter, SpectralRouter, one_hot
from eigenmix.harness.evaluator import Evaluator
from eigenmix.harness.splits import CarvedTask
from eigenmix.io import read_lora_adapter
from eigenmix.train.encoder import load_encoder

ADAPTER = "adapter_model.safetensors"


def perturbed_copies(folders: list[Path], k: int, into: Path, seed: int) -> list[Path]:
    """``k`` adapter folders: the trained ones first, then perturbed copies of them."""
    out = list(folders[:k])
    for c in range(len(folders), k):
        source = folders[c % len(folders)]
        target = into / f"copy{c}-{source.name}"
        target.mkdir()
        shutil.copyfile(source / "adapter_config.json", target / "adapter_config.json")
        gen = torch.Generator().manual_seed(seed * 1000 + c)
        tensors = load_file(str(source / ADAPTER))
        noisy = {key: t + 0.1 * t.float().std() * torch.randn(t.shape, generator=gen, dtype=t.dtype) for key, t in tensors.items()}
        save_file(noisy, str(target / ADAPTER))
        out.append(target)
    return out


def _median_seconds(run: Callable[[], Any], repeats: int) -> float:
    with torch.no_grad():
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_cost(settings: ComposeSettings, tasks: list[CarvedTask], folders: list[Path], ev: Evaluator, console: Console) -> dict:
    """Per K: seconds of each entry and its ratio to the base model's forward."""
    from peft import PeftModel

    rng = random.Random(settings.bench.seed)
    stream = [r for t in tasks for r in t.task.test]
    rows = rng.sample(stream, min(settings.cost_rows, len(stream)))
    batch = one_batch(ev, rows)
    repeats = settings.cost_repeats
    ev.apply(None)
    out: dict[str, Any] = {
        "rows": len(rows), "tokens": int(batch["input_ids"].shape[1]), "threads": torch.get_num_threads(), "per_k": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="eigenmix-cost-") as tmp:
        for k in settings.cost_ks:
            (Path(tmp) / str(k)).mkdir()
            paths = perturbed_copies(folders, k, Path(tmp) / str(k), settings.bench.seed)
            library = Library()
            for p in paths:
                library.add(read_lora_adapter(p, name=p.name))
            names = [library.names[i % k] for i in range(len(rows))]
            given = one_hot(library, names)
            entry: dict[str, float] = {"base": _median_seconds(partial(ev.encoder, **batch), repeats)}
            routers: dict[str, Router] = {
                "sequence, every layer": SpectralRouter(level="sequence", scope="layer"),
                "sequence, first layer, top-1": SpectralRouter(level="sequence", scope="first", top_k=1),
                "sequence, all layers (two passes)": SpectralRouter(level="sequence", scope="all"),
                "token, every layer": SpectralRouter(level="token", scope="layer"),
                "mixed batch (eigenmix)": GivenRouter(),
            }
            for name, router in routers.items():
                model = RoutedModel(ev.encoder, library, router)
                try:
                    entry[name] = _median_seconds(partial(model, **batch, given=given), repeats)
                finally:
                    model.detach_hooks()
            arrow = peft_arrow_model([str(p) for p in paths], top_k=min(3, k))  # PEFT fails for top_k > K
            entry["peft arrow"] = _median_seconds(partial(arrow, **batch), repeats)
            del arrow
            peft = PeftModel.from_pretrained(load_encoder(None)[0].eval(), str(paths[0]), adapter_name=library.names[0])
            for p, name in zip(paths[1:], library.names[1:], strict=True):
                peft.load_adapter(str(p), adapter_name=name)
            peft.eval()
            entry["peft mixed batch"] = _median_seconds(partial(peft, **batch, adapter_names=names), repeats)
            del peft
            rank = sum(int(f.S.shape[0]) for e in library for f in list(e.layers.values())[:1])
            out["per_k"][str(k)] = {
                "seconds": {n: round(s, 4) for n, s in entry.items()},
                "ratio_to_base": {n: round(s / entry["base"], 3) for n, s in entry.items() if n != "base"},
                "summed_rank_first_layer": rank,
                "min_m_n_first_layer": min(library.shapes()[library.layers[0]]),
            }
            console.print(f"cost K={k}: " + json.dumps(out["per_k"][str(k)]["ratio_to_base"]))
    return out
