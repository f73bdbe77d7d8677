"""eigenmix: compose neural-network modules in their spectral bases."""

__version__ = "0.1.0"

from eigenmix import merge

__all__ = ["__version__", "merge"]
