"""eigenmix: compose neural-network modules in their spectral bases.

``eigenmix.merge(modules, "tsv")`` merges modules (the registry and its methods live in
:mod:`eigenmix.merging`).
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "merge"]


def __getattr__(name: str) -> Any:
    # ``eigenmix.merge`` imports torch and the methods on first use, not at ``import eigenmix``
    # (the console script sets its signal handlers before anything heavy is loaded)
    if name == "merge":
        from eigenmix.merging import merge

        return merge
    if name in ("merging", "compose", "modules", "spectral", "io", "errors"):
        import importlib

        return importlib.import_module(f"eigenmix.{name}")
    raise AttributeError(f"module 'eigenmix' has no attribute '{name}'")
