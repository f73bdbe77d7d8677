"""Hypothesis strategies for the linear-algebra tests: random low-rank factors,
including rank-deficient and zero ones."""

from __future__ import annotations

import torch
from hypothesis import strategies as st


@st.composite
def lowrank_factors(draw, max_dim: int = 40, max_rank: int = 12, dtype: torch.dtype = torch.float64):
    """``(B (m, r), A (r, n))`` with an optional deficiency: a zero factor, duplicate
    columns, or an inner rank below r."""
    m = draw(st.integers(1, max_dim))
    n = draw(st.integers(1, max_dim))
    r = draw(st.integers(1, max_rank))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["full", "zero_B", "zero_A", "duplicate", "inner_rank"]))
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(m, r, generator=g, dtype=dtype)
    A = torch.randn(r, n, generator=g, dtype=dtype)
    if kind == "zero_B":
        B.zero_()
    elif kind == "zero_A":
        A.zero_()
    elif kind == "duplicate" and r > 1:
        B[:, -1] = B[:, 0]
    elif kind == "inner_rank" and r > 1:
        k = draw(st.integers(1, r - 1))
        B = B[:, :k] @ torch.randn(k, r, generator=g, dtype=dtype)
    return B, A


@st.composite
def module_family(draw, max_modules: int = 4, max_dim: int = 30, max_rank: int = 6):
    """K modules of one layer shape, some sharing directions with earlier ones."""
    m = draw(st.integers(2, max_dim))
    n = draw(st.integers(2, max_dim))
    k = draw(st.integers(1, max_modules))
    seed = draw(st.integers(0, 2**31 - 1))
    share = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    factors = []
    for i in range(k):
        r = draw(st.integers(1, max_rank))
        B = torch.randn(m, r, generator=g, dtype=torch.float64)
        A = torch.randn(r, n, generator=g, dtype=torch.float64)
        if share and i > 0:
            B[:, 0] = factors[0][0][:, 0]  # a shared output direction
            A[0] = factors[0][1][0]  # and a shared input direction
        factors.append((B, A))
    return factors
