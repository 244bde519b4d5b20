"""Window maths (models/windows.py): several series packed together give each series,
bit for bit, what it gets alone."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.windows import (
    RangeStats,
    decayed_prefix,
    packed_decayed_prefix,
    packed_search,
    packed_stats,
)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 70), min_size=1, max_size=6),
       seed=st.integers(0, 2**32 - 1), half_life=st.sampled_from([1.0, 50.0, 5000.0]))
def test_packed_series_equal_each_series_alone(lengths: list[int], seed: int,
                                               half_life: float) -> None:
    rng = np.random.default_rng(seed)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    t = np.concatenate([np.sort(rng.integers(-10**6, 10**6, k)) for k in lengths])
    x = rng.normal(size=(len(t), 2)) * 1000
    x[rng.random(x.shape) < 0.2] = np.nan
    tree, shift = packed_stats(x, starts)
    a, w = packed_decayed_prefix(t, x, starts, half_life)
    for g, k in enumerate(lengths):
        lo_g, hi_g = starts[g], starts[g + 1]
        alone = RangeStats(x[lo_g:hi_g])
        lo = rng.integers(0, k, 20)
        hi = lo + rng.integers(0, k - lo + 1)
        want = alone.query(lo, hi)
        got = tree.query(lo + lo_g + shift[g], hi + lo_g + shift[g])
        for u, v in zip(want, got, strict=True):
            np.testing.assert_array_equal(u, v)
        a1, w1 = decayed_prefix(t[lo_g:hi_g], x[lo_g:hi_g], half_life)
        np.testing.assert_array_equal(a[lo_g:hi_g], a1)  # over 500 half-lives too
        np.testing.assert_array_equal(w[lo_g:hi_g], w1)
        values = rng.integers(-2 * 10**6, 2 * 10**6, 10)
        for side in ("left", "right"):
            found = packed_search(t, starts, np.full(10, g), values, side)
            np.testing.assert_array_equal(found - lo_g,
                                          np.searchsorted(t[lo_g:hi_g], values, side))
