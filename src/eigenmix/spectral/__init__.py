"""Pure tensor functions of the spectral core: no I/O, no ``nn.Module``.

- :func:`factored_svd`: SVD of ``B @ A`` without forming it.
- :func:`truncated_svd`, :func:`randomized_svd`, :func:`svd`: SVD of a dense matrix.
- :func:`rank_for_energy`, :func:`retained_energy`, :func:`energy_profile`.
- :func:`module_spectra`, :func:`joint_basis`, :func:`cores`, :func:`reconstruct`,
  :func:`core_svd`: the joint basis of several deltas and their cores.
- :func:`polar_factor`: orthogonal Procrustes (TSV-M, Iso-CTS).
- :func:`principal_angles`, :func:`subspace_overlap`: how two subspaces overlap.
"""

from eigenmix.spectral.angles import principal_angles, range_overlap, subspace_overlap
from eigenmix.spectral.energy import energy_profile, rank_for_energy, retained_energy
from eigenmix.spectral.factored import SVD, factored_svd
from eigenmix.spectral.gram import gram_range, gram_range_implicit
from eigenmix.spectral.joint import (
    JointBasis,
    core,
    core_svd,
    cores,
    default_rtol,
    joint_basis,
    module_spectra,
    orthonormal_range,
    project,
    reconstruct,
)
from eigenmix.spectral.procrustes import polar_factor
from eigenmix.spectral.truncated import randomized_svd, svd, truncated_svd

__all__ = [
    "SVD",
    "JointBasis",
    "core",
    "core_svd",
    "cores",
    "default_rtol",
    "energy_profile",
    "factored_svd",
    "gram_range",
    "gram_range_implicit",
    "joint_basis",
    "module_spectra",
    "orthonormal_range",
    "polar_factor",
    "principal_angles",
    "project",
    "randomized_svd",
    "range_overlap",
    "rank_for_energy",
    "reconstruct",
    "retained_energy",
    "subspace_overlap",
    "svd",
    "truncated_svd",
]
