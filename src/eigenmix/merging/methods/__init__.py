"""The built-in merge methods, one file each; importing this package registers them."""

from eigenmix.merging.methods import (  # noqa: F401
    dare,
    dare_ties,
    iso_c,
    iso_cts,
    knots,
    linear,
    magnitude_prune,
    opcm,
    spectral,
    star,
    task_arithmetic,
    ties,
    tsv,
)
