"""The one rule that derives a seed for a named part (a layer, a task) from a global seed."""

from __future__ import annotations

import zlib


def derived_seed(seed: int, name: str) -> int:
    """A seed for ``name`` under the global ``seed``: independent of the order in which
    parts are processed, different for different names, the same on every run."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)
