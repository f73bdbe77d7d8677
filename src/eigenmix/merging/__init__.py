"""Merge methods: one registry, one file per method, one engine, one pipeline.

``merge(modules, "tsv")`` (also ``eigenmix.merge``) merges modules in memory;
``iter_merge`` yields the same layers one at a time; ``all_methods()`` lists what is
registered; ``@register(...)`` adds a method; ``run_merge`` runs a config file end to end.
"""

from eigenmix.merging import methods  # noqa: F401 - importing it registers the built-in methods
from eigenmix.merging.engine import (
    LayerInput,
    LayerResult,
    check_compatible,
    collect,
    iter_merge,
    merge,
    merge_layer,
    merged_extras,
    run_plan,
)
from eigenmix.merging.plan import MergePlan, make_plan
from eigenmix.merging.registry import LayerContext, MergeMethod, MergeParams, all_methods, get_method, register
from eigenmix.merging.statistics import Grams, GramSource, LayerGrams

__all__ = [
    "GramSource",
    "Grams",
    "LayerContext",
    "LayerGrams",
    "LayerInput",
    "LayerResult",
    "MergeMethod",
    "MergeParams",
    "MergePlan",
    "all_methods",
    "check_compatible",
    "collect",
    "get_method",
    "iter_merge",
    "make_plan",
    "merge",
    "merge_layer",
    "merged_extras",
    "register",
    "run_plan",
]
