"""Pure tensor functions of the spectral core: no I/O, no ``nn.Module``.

- :func:`factored_svd`: SVD of ``B @ A`` without forming it.
- :func:`truncated_svd`, :func:`randomized_svd`, :func:`svd`: SVD of a dense matrix.
- :func:`rank_for_energy`, :func:`retained_energy`, :func:`energy_profile`.
- :func:`default_rtol`, :func:`numerical_rank`: the one rank rule.
- :func:`decompose`, :class:`LayerSpectra`, :class:`JointBasis`: the joint-basis engine.
- :func:`gram_range`: the fast rank-revealing range of a stack of factors.
- :func:`polar_factor`: orthogonal Procrustes (TSV-M, Iso-CTS).
- :func:`default_threads`, :func:`torch_threads`, :func:`small_op`: explicit thread use.
- :func:`principal_angles`, :func:`subspace_overlap`, :func:`range_overlap`: how subspaces overlap.
"""

from eigenmix.spectral.angles import orthonormal_range, principal_angles, range_overlap, subspace_overlap
from eigenmix.spectral.energy import energy_profile, rank_for_energy, retained_energy
from eigenmix.spectral.factored import SVD, factored_svd
from eigenmix.spectral.gram import gram_range
from eigenmix.spectral.joint import ImplicitBasis, JointBasis, LayerSpectra, decompose
from eigenmix.spectral.procrustes import polar_factor
from eigenmix.spectral.rank import default_rtol, numerical_rank
from eigenmix.spectral.threads import default_threads, small_op, torch_threads
from eigenmix.spectral.truncated import randomized_svd, svd, truncated_svd

__all__ = [
    "SVD",
    "ImplicitBasis",
    "JointBasis",
    "LayerSpectra",
    "decompose",
    "default_rtol",
    "default_threads",
    "energy_profile",
    "factored_svd",
    "gram_range",
    "numerical_rank",
    "orthonormal_range",
    "polar_factor",
    "principal_angles",
    "randomized_svd",
    "range_overlap",
    "rank_for_energy",
    "retained_energy",
    "small_op",
    "subspace_overlap",
    "svd",
    "torch_threads",
    "truncated_svd",
]
