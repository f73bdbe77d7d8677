"""Training kinds: how a module is parametrised while it trains (``lora``, ``pissa``,
``svf``, ``spectral_adapter``, ``orthogonal``), one file per kind behind one registry."""

from eigenmix.kinds import lora, pissa, spectral_adapter, svf  # noqa: F401  (importing a kind registers it)
from eigenmix.kinds.attach import Attached, attach, target_layers
from eigenmix.kinds.orthogonal import library_bases
from eigenmix.kinds.registry import KindLayer, KindParams, LayerBasis, LayerContext, TrainKind, all_kinds, get_kind

__all__ = [
    "Attached",
    "KindLayer",
    "KindParams",
    "LayerBasis",
    "LayerContext",
    "TrainKind",
    "all_kinds",
    "attach",
    "get_kind",
    "library_bases",
    "target_layers",
]
