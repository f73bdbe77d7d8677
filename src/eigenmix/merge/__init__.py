"""Merge methods: one registry, one file per method, one per-layer path.

``eigenmix.merge(modules, "tsv")`` (or ``eigenmix.merge.merge``) merges modules;
``all_methods()`` lists what is registered; ``@register(...)`` adds a method.
"""

import sys
import types

from eigenmix.merge.api import LayerResult, check_compatible, iter_merge, layer_seed, merge, merge_layer, merged_extras
from eigenmix.merge.layer import LayerSpectra, decompose
from eigenmix.merge.registry import MergeMethod, MergeParams, all_methods, get_method, register

__all__ = [
    "LayerResult",
    "LayerSpectra",
    "MergeMethod",
    "MergeParams",
    "all_methods",
    "check_compatible",
    "decompose",
    "get_method",
    "iter_merge",
    "layer_seed",
    "merge",
    "merge_layer",
    "merged_extras",
    "register",
]


class _CallablePackage(types.ModuleType):
    """Lets ``eigenmix.merge(...)`` call :func:`merge` while ``eigenmix.merge`` stays the package."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return merge(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
