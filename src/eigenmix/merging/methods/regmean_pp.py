"""RegMean++: RegMean whose Grams are taken on the inputs the *merged* model gives each
task: block by block, task k's rows run through the already-merged earlier blocks and its
own model's current block (:class:`eigenmix.compose.grams.MergedGrams`), so each layer's
solve sees the drift the earlier merges cause. The solve itself is RegMean's, with its
defaults (:mod:`eigenmix.merging.methods.regmean`). The merged blocks are seen at scale 1,
so ``scale`` stays a plain multiplier of the result.
"""

from __future__ import annotations

from eigenmix.merging.methods.regmean import RegMeanParams, regmean_layer
from eigenmix.merging.registry import register

register(
    "regmean_pp",
    params=RegMeanParams,
    kind="spectral",
    description="RegMean with Grams of the merged model's earlier blocks (intra- and cross-layer dependencies); factored",
    paper="Nguyen et al., RegMean++: Enhancing Effectiveness and Generalization of Regression Mean for Model Merging, 2025",
    url="https://arxiv.org/abs/2508.03121",
    vectors="mean",
    calibration="merged",
)(regmean_layer)
