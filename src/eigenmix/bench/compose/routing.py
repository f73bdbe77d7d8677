"""Every router on the test rows of all tasks as one stream, each row scored with its own
task's head (the router never sees the task), with settings chosen on validation rows only.

Tiers of information, from none to labeled rows:

- ``oracle``: the row's own module (the harness's check: equals each adapter alone);
- ``uniform``: every module at 1/K (μ-routing, = the ``linear`` average merge);
- ``arrow`` (eigenmix) and ``peft_arrow`` (PEFT's ``create_arrow_model``): Arrow's rule at
  PEFT's defaults (top-3, temperature 1);
- ``spectral``: the adapters alone (``calibration: chance``);
- ``spectral+stats(n=16)``: each module's mean and spread of its score on ``calib_rows``
  unlabeled rows of its own task (kept beside it in the library);
- ``spectral+stream``: the same numbers over the unlabeled stream being routed (transductive);
- ``learned(n=64)``: a logistic gate from ``gate_rows`` rows per task, the task as the label.

Each spectral entry picks its scope (every layer, once from every layer's scores in a
first pass, or once at the first layer), temperature and
top-k by the mean validation accuracy over the tasks; the learned gate its temperature and
top-k. Validation rows come from the carved validation split (never trained on).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import torch

from eigenmix.bench.compose.passes import one_batch, own_task, routed_pass, routing_accuracy, task_rows
from eigenmix.bench.compose.settings import ComposeSettings
from eigenmix.bench.suites import get_suite
from eigenmix.compose import Library, Router
from eigenmix.compose.router_stats import calibrate, stream_statistics
from eigenmix.compose.routers import (
    ArrowRouter,
    GivenRouter,
    LearnedRouter,
    SpectralRouter,
    UniformRouter,
    fit_gate,
    gate_features,
    get_router,
)
from eigenmix.harness.evaluator import Evaluator, Head, Split, head_accuracies
from eigenmix.harness.splits import CarvedTask

Make = Callable[..., Router]


def _score(ev: Evaluator, library: Library, router: Router, split: Split, heads: dict[str, Head], given: Any = None) -> dict:
    start = time.perf_counter()
    features, routing = routed_pass(ev, library, router, split, given)
    per_task = head_accuracies(features, split, heads)
    return {
        "per_task": per_task,
        "avg_acc": sum(per_task.values()) / len(per_task),
        "routing_acc": routing_accuracy(routing, split, library),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _select(ev: Evaluator, library: Library, make: Make, grid: dict[str, tuple], val: Split, heads: dict[str, Head]) -> tuple[dict, dict]:
    """The grid point with the best mean validation accuracy (ties: the first)."""
    tried: dict[str, float] = {}
    best: tuple[float, dict] | None = None
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        acc = _score(ev, library, make(**params), val, heads)["avg_acc"]
        tried[", ".join(f"{k}={v}" for k, v in params.items())] = round(acc, 4)
        if best is None or acc > best[0]:
            best = (acc, params)
    assert best is not None
    return best[1], tried


def run_routing(
    settings: ComposeSettings,
    tasks: list[CarvedTask],
    library: Library,
    ev: Evaluator,
    heads: dict[str, Head],
    individual: dict[str, float],
    adapter_folders: list[str],
    on_entry: Callable[[str, dict], None],
) -> dict[str, dict]:
    """Every entry's test scores (``per_task``, ``avg_acc``, ``routing_acc``, ``seconds``,
    ``chosen`` settings and the ``validation`` grid)."""
    seed = settings.bench.seed
    val = ev.split({t.name: t.val for t in tasks})
    test = ev.split({t.name: t.task.test for t in tasks})
    ev.apply(None)
    spectral_grid = {"scope": ("layer", "first", "all"), "temperature": settings.temperatures, "top_k": settings.top_ks}
    calib = {t.name: one_batch(ev, task_rows(t, settings.calib_rows, seed)) for t in tasks}
    gate_batches = {t.name: one_batch(ev, task_rows(t, settings.gate_rows, seed)) for t in tasks}

    start = time.perf_counter()
    own = calibrate(ev.encoder, library, calib)
    stats_seconds = time.perf_counter() - start
    start = time.perf_counter()
    gates = {
        "first": fit_gate(*gate_features(ev.encoder, library, gate_batches), len(library)),
        "all": fit_gate(*gate_features(ev.encoder, library, gate_batches, library.layers), len(library), layers=library.layers),
    }
    gate_seconds = time.perf_counter() - start

    entries: dict[str, tuple[Make, dict[str, tuple], dict]] = {
        "uniform": (lambda: UniformRouter(), {}, {}),
        "arrow": (lambda: ArrowRouter(), {}, get_router("arrow").defaults()),  # PEFT's defaults
        "spectral": (lambda **p: SpectralRouter(calibration="chance", **p), spectral_grid, {"rows_per_module": 0}),
        "spectral+stats(n=16)": (
            lambda **p: SpectralRouter(calibration="stats", stats=own, **p), spectral_grid,
            {"rows_per_module": settings.calib_rows, "unlabeled": True, "calibrate_seconds": round(stats_seconds, 1)},
        ),
        "learned(n=64)": (
            lambda gate, **p: LearnedRouter(gates[gate], **p),
            {"gate": ("first", "all"), "temperature": (0.3, 1.0, 3.0), "top_k": settings.top_ks},
            {"rows_per_task": settings.gate_rows, "fit_seconds": round(gate_seconds, 1)},
        ),
    }  # fmt: skip
    out: dict[str, dict] = {}
    result = _score(ev, library, GivenRouter(), test, heads, own_task(test, library))
    out["oracle"] = result | {"chosen": {}}
    on_entry("oracle", out["oracle"])
    for name, (make, grid, info) in entries.items():
        chosen, tried = _select(ev, library, make, grid, val, heads) if grid else ({}, {})
        out[name] = _score(ev, library, make(**chosen), test, heads) | {"chosen": chosen | info, "validation": tried}
        on_entry(name, out[name])
    # the stream's own statistics: over the validation stream for the choice, the test stream for the test
    chosen, tried = _select(ev, library, _stream(ev, library, val), spectral_grid, val, heads)
    out["spectral+stream"] = _score(ev, library, _stream(ev, library, test)(**chosen), test, heads) | {
        "chosen": chosen | {"unlabeled_stream": True}, "validation": tried,
    }  # fmt: skip
    on_entry("spectral+stream", out["spectral+stream"])
    vision = settings.bench.suite == "vision"
    out["peft_arrow"] = peft_arrow(ev, adapter_folders, test, heads, base=get_suite(settings.bench.suite).base if vision else None)
    on_entry("peft_arrow", out["peft_arrow"])
    for entry in (e for e in out.values() if "per_task" in e):
        entry["avg_normalized_acc"] = sum(entry["per_task"][n] / individual[n] for n in entry["per_task"]) / len(entry["per_task"])
    return out


def _stream(ev: Evaluator, library: Library, split: Split) -> Make:
    stats = stream_statistics(ev.encoder, library, split.batches)
    return lambda **p: SpectralRouter(calibration="stats", stats=stats, **p)


def peft_arrow_model(folders: list[str], top_k: int = 3, temperature: float = 1.0, base: str | None = None) -> Any:
    """PEFT's ``create_arrow_model`` over the adapter folders on a fresh base model
    (``base``: a :func:`~eigenmix.harness.backbones.load_backbone` name; default the text encoder).

    The text encoder is loaded without BERT's pooler: PEFT reduces the adapters' targets to
    leaf names (``dense``), so its Arrow router would also wrap ``pooler.dense``, which no
    adapter has, and fail (``stack expects a non-empty TensorList``); the pooler is unused here."""
    from peft import ArrowConfig, create_arrow_model

    config = ArrowConfig(top_k=top_k, router_temperature=temperature, rng_seed=0)
    if base is not None:
        from eigenmix.harness.backbones import load_backbone

        return create_arrow_model(load_backbone(base).model, folders, config).eval()
    from transformers import AutoModel

    from eigenmix.train.encoder import MINILM_ID, encoder_path, quiet_transformers

    quiet_transformers()
    model = AutoModel.from_pretrained(str(encoder_path(MINILM_ID)), add_pooling_layer=False).eval()
    return create_arrow_model(model, folders, config).eval()


@torch.no_grad()
def peft_arrow(ev: Evaluator, folders: list[str], split: Split, heads: dict[str, Head], base: str | None = None) -> dict:
    """Real PEFT Arrow (``create_arrow_model``, its defaults) on the same adapters and rows.

    Where PEFT refuses the adapters (its Arrow takes LoRAs on ``nn.Linear`` and ``nn.Conv1d``
    only, so no conv LoRA), the entry records PEFT's own message as ``unsupported``."""
    import peft

    top_k = min(3, len(folders))
    chosen = {"top_k": top_k, "temperature": 1.0, "peft": peft.__version__}
    try:
        model = peft_arrow_model(folders, top_k=top_k, base=base)  # PEFT fails for top_k > K
    except (TypeError, ValueError) as err:  # PEFT raises TypeError, listing every conv layer
        return {"unsupported": f"PEFT {peft.__version__} refuses: {str(err).splitlines()[0].removesuffix(' Found:')}", "chosen": chosen}
    start = time.perf_counter()
    features = [ev.inputs.pool(model(**batch), batch) for batch in split.batches]
    f = torch.empty(len(split.order), features[0].shape[1])
    f[split.order] = torch.cat(features)
    per_task = head_accuracies(f, split, heads)
    return {
        "per_task": per_task,
        "avg_acc": sum(per_task.values()) / len(per_task),
        "seconds": round(time.perf_counter() - start, 1),
        "chosen": chosen,
    }
