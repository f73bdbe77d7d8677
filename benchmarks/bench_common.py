"""What every benchmark script shares: the machine description and the JSON output."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def machine() -> dict:
    """Cores, torch threads, processor and torch version, recorded with every result."""
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.machine(), "torch": torch.__version__}


def write_result(path: Path, result: dict) -> None:
    """Write ``result`` (plus the machine) as JSON, atomically, and print it."""
    result = {**result, "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(json.dumps(result, indent=2))
