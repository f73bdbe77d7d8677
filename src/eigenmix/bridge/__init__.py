"""A spectral bridge between two encoders of different modalities (design note: "A bridge
between modalities"): each side's spectral basis (:mod:`~eigenmix.bridge.bases`), a
closed-form joint space between them (:mod:`~eigenmix.bridge.joint`), one learned
coefficient per joint direction (:mod:`~eigenmix.bridge.fit`), the bridge itself with
feature picking, save and load (:mod:`~eigenmix.bridge.model`), and the baselines it is
measured against (:mod:`~eigenmix.bridge.baselines`)."""

from eigenmix.bridge.bases import SideBasis, side_basis
from eigenmix.bridge.fit import BridgeSettings, fit_bridge
from eigenmix.bridge.joint import JointStart, cca_start, procrustes_start
from eigenmix.bridge.model import Bridge, load_bridge, retrieval, save_bridge

__all__ = [
    "Bridge",
    "BridgeSettings",
    "JointStart",
    "SideBasis",
    "cca_start",
    "fit_bridge",
    "load_bridge",
    "procrustes_start",
    "retrieval",
    "save_bridge",
    "side_basis",
]
