"""eigenmix: compose neural-network modules in their spectral bases.

``eigenmix.merge(modules, "tsv")`` merges modules (the registry and its methods live in
:mod:`eigenmix.merging`).
"""

__version__ = "0.1.0"

from eigenmix.merging import merge

__all__ = ["__version__", "merge"]
