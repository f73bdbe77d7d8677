"""The built-in merge methods, one file each; importing this package registers them."""

from eigenmix.merging.methods import (  # noqa: F401
    dare,
    dare_ties,
    iso_c,
    iso_cts,
    knots,
    linear,
    lot,
    magnitude_prune,
    opcm,
    regmean,
    regmean_pp,
    spectral,
    spectral_align,
    spectral_ls,
    star,
    task_arithmetic,
    ties,
    tsv,
)
