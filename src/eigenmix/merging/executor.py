"""Who runs the per-layer work of a merge elsewhere: Ray tasks (:class:`RayExecutor`, an
:class:`~eigenmix.merging.plan.Executor`), with results identical to the engine's own loop
in this process (the default, no executor).

Layers are independent, so a merge is a map over them. A Ray worker reads its layer's
tensors directly from the input files (shared storage, as in a cluster: the modules are
reopened lazily in each worker from their paths), merges the layer with the same code and
the same per-layer seed, and returns the merged delta; the driver keeps at most
``2 × workers`` layers in flight and yields them in order, so the writer streams them
exactly as it streams a local merge. Ray is an optional extra (``pip install -c
constraints.txt -e ".[ray]"``).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import Tensor

from eigenmix.errors import EigenmixError, ExecutorError, InvalidInputError
from eigenmix.merging.plan import Done, MergePlan, make_plan
from eigenmix.modules import Module, SpectralDelta

Source = tuple[Literal["adapter", "finetune"], str, str | None, str]  # kind, path, base (fine-tunes), name
INSTALL = 'Ray is not installed: pip install -c constraints.txt -e ".[ray]" (the ray extra)'


def source_of(module: Module) -> Source:
    """Where a worker reopens ``module`` from (refused for modules that live only in memory)."""
    if module.source is None:
        raise InvalidInputError(f"module {module.name} was not read from a file; a distributed executor reopens modules from their paths")
    if module.peft is not None:
        return ("adapter", module.source, None, module.name)
    return ("finetune", module.source, module.base_model, module.name)


@lru_cache(maxsize=4)
def _open(sources: tuple[Source, ...]) -> list[Module]:
    """The modules, reopened lazily (once per worker process; fine-tunes share one reader
    of their base, as locally)."""
    from eigenmix.io import CheckpointReader, load_task_vector, read_lora_adapter

    bases = {base: CheckpointReader(base, keep_last=True) for kind, _, base, _ in sources if kind == "finetune" and base is not None}
    return [
        read_lora_adapter(path, name=name, lazy=True) if kind == "adapter" else load_task_vector(bases[str(base)], path, name=name)
        for kind, path, base, name in sources
    ]


def merge_remote(sources: tuple[Source, ...], spec: dict[str, Any], layer: str, thresholds: Tensor | None) -> Done:
    """One layer, in a worker: the modules reopened from their files, the plan rebuilt from
    its settings, the layer merged by the one engine."""
    from eigenmix.merging.engine import LayerInput, merge_layer

    torch.set_num_threads(spec.pop("threads"))
    start = time.perf_counter()
    modules = _open(sources)
    plan = make_plan(**spec)
    members = [i for i, m in enumerate(modules) if layer in m.layers]
    item = LayerInput(layer, [modules[i].layers[layer] for i in members], [plan.weights[i] for i in members], members)
    delta = merge_layer(plan, item, None if thresholds is None else thresholds[members])
    if isinstance(delta, SpectralDelta):  # contiguous copies travel lighter than views
        delta = SpectralDelta(delta.U.contiguous(), delta.S.contiguous(), delta.V.contiguous(), delta.kernel)
    return layer, delta, time.perf_counter() - start


@dataclass(frozen=True)
class RayExecutor:
    """Layers as Ray tasks.

    Attributes:
        address: ``None`` starts a local Ray instance; ``"auto"`` joins the cluster this
            machine belongs to; ``"HOST:PORT"`` a given one.
        workers: CPUs of a local instance, and how many layers run at once.
        threads: torch threads per task.
    """

    address: str | None = None
    workers: int = 2
    threads: int = 1

    def run(self, modules: Sequence[Module], plan: MergePlan, layers: Sequence[str], thresholds: Tensor | None) -> Iterator[Done]:
        ray = _ray()
        if plan.calibration is not None:
            raise InvalidInputError("calibrated methods run on the local executor (their statistics follow the merge)")
        sources = tuple(source_of(m) for m in modules)
        spec = {
            "method": plan.method.name, "n_modules": len(modules), "weights": list(plan.weights), "params": plan.params.model_dump(),
            "seed": plan.seed, "dense_rank": plan.dense_rank, "dense_energy": plan.dense_energy,
        }  # fmt: skip
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a merge
            logging.getLogger("ray").setLevel(logging.ERROR)  # its start-up notes are not the merge's output
            kwargs: dict[str, Any] = {"address": self.address} if self.address else {"num_cpus": self.workers}
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
        task = ray.remote(num_cpus=1, max_retries=0)(merge_remote)
        pending: deque[Any] = deque()
        try:
            for layer in layers:
                pending.append(task.remote(sources, {**spec, "threads": self.threads}, layer, thresholds))
                if len(pending) >= 2 * self.workers:
                    yield _get(ray, pending.popleft())
            while pending:
                yield _get(ray, pending.popleft())
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def _get(ray: Any, ref: Any) -> Done:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, EigenmixError):
            raise cause from None
        raise ExecutorError(
            f"a Ray worker failed: {type(cause).__name__ if cause else 'error'}: {str(cause or err).splitlines()[0]}"
        ) from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayError) as err:
        raise ExecutorError(f"a Ray worker died mid-merge ({type(err).__name__}); nothing was written") from None


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(INSTALL) from None
    return ray
