"""How many threads torch may use, set explicitly.

Small dense linear algebra (the r×r and R×R cores, small Grams and their eigendecompositions)
runs single-threaded whatever the setting: on a busy machine extra threads only wait for
each other (measured on 2 cores beside another job: one 120 × 120 ``eigh`` 0.5 s with the
default threads against 0.6 ms with one). The large products use what the user allows
(``--threads``, the config's ``threads``), by default the cores not already busy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

SMALL = 512  # an operand no side of which exceeds this runs on one thread


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """The cores not already busy: available cores minus the 1-minute load average (at
    least 1), so a merge started beside another job does not oversubscribe the machine."""
    cores = available_cores()
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, restoring the previous setting."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def small_op(*operands: Tensor) -> Iterator[None]:
    """One thread for the block when every operand is small (no side above :data:`SMALL`)."""
    if all(max(t.shape, default=0) <= SMALL for t in operands):
        with torch_threads(1):
            yield
    else:
        yield
