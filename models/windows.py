"""Exact statistics over many ranges of one series, and event-time decayed sums.

The window maths of the sensor features, vectorised over all queried rows at once:

- `RangeStats` answers count, mean, population std, min and max over half-open index
  ranges `[lo, hi)` of a series by merging the O(log n) nodes of a segment tree that cover
  each range with Chan's pairwise update, which is as stable as a two-pass std (no
  running sum of squares to cancel);
- `decayed_prefix` gives, for every position p of a time-sorted series, the sums
  Σ_{q<=p} 2^(-(t_p - t_q)/h) x_q and Σ_{q<=p} 2^(-(t_p - t_q)/h).

>>> s = RangeStats(np.array([1.0, 2.0, 4.0, 8.0]))
>>> n, mean, std, lo, hi = s.query(np.array([0, 1]), np.array([4, 3]))
>>> n[:, 0].tolist(), mean[:, 0].tolist(), lo[:, 0].tolist(), hi[:, 0].tolist()
([4, 2], [3.75, 3.0], [1.0, 2.0], [8.0, 4.0])
>>> a, w = decayed_prefix(np.array([0, 10, 10]), np.array([4.0, 2.0, 1.0]), 10.0)
>>> (a / w).tolist()
[4.0, 2.6666666666666665, 2.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["RangeStats", "decayed_prefix"]

#: the largest exponent of 2 inside one chunk of `decayed_prefix` (2**500 ~ 3e150)
_SPAN = 500.0


class RangeStats:
    """Count, mean, std, min, max over ranges of `x`, from a bottom-up segment tree."""

    def __init__(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        x = x.reshape(len(x), -1)  # one column per series; NaN is an empty leaf
        size = 1 << max(0, int(len(x) - 1).bit_length())
        self.size = size
        present = ~np.isnan(x)
        # node i has children 2i and 2i+1; leaves are size..2*size-1; padding is empty
        shape = (2 * size, x.shape[1])
        self.count = np.zeros(shape)
        self.mean = np.zeros(shape)
        self.m2 = np.zeros(shape)
        self.min = np.full(shape, np.inf)
        self.max = np.full(shape, -np.inf)
        leaves = slice(size, size + len(x))
        self.count[leaves] = present
        self.mean[leaves] = np.where(present, x, 0.0)
        self.min[leaves] = np.where(present, x, np.inf)
        self.max[leaves] = np.where(present, x, -np.inf)
        lo = size
        while lo > 1:
            a, b = slice(lo, 2 * lo, 2), slice(lo + 1, 2 * lo, 2)
            parent = slice(lo // 2, lo)
            self.count[parent], self.mean[parent], self.m2[parent] = _merge(
                self.count[a], self.mean[a], self.m2[a], self.count[b], self.mean[b],
                self.m2[b])
            self.min[parent] = np.minimum(self.min[a], self.min[b])
            self.max[parent] = np.maximum(self.max[a], self.max[b])
            lo //= 2

    def query(self, lo: np.ndarray, hi: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(count, mean, std, min, max) of each range `[lo[i], hi[i])`, one column per series.

        A range with no values in a column gives count 0 and NaN statistics there.
        """
        left = np.asarray(lo, np.int64) + self.size
        right = np.asarray(hi, np.int64) + self.size
        shape = (len(left), self.count.shape[1])
        n, mean, m2 = np.zeros(shape), np.zeros(shape), np.zeros(shape)  # grown rightwards
        rn, rmean, rm2 = np.zeros(shape), np.zeros(shape), np.zeros(shape)  # leftwards
        mn, mx = np.full(shape, np.inf), np.full(shape, -np.inf)
        while True:
            open_ = left < right
            if not open_.any():
                break
            take = np.nonzero(open_ & (left & 1 == 1))[0]
            if len(take):
                node = left[take]
                n[take], mean[take], m2[take] = _merge(
                    n[take], mean[take], m2[take], self.count[node], self.mean[node],
                    self.m2[node])
                mn[take] = np.minimum(mn[take], self.min[node])
                mx[take] = np.maximum(mx[take], self.max[node])
                left[take] += 1
            take = np.nonzero(open_ & (right & 1 == 1))[0]
            if len(take):
                right[take] -= 1
                node = right[take]
                rn[take], rmean[take], rm2[take] = _merge(
                    self.count[node], self.mean[node], self.m2[node], rn[take], rmean[take],
                    rm2[take])
                mn[take] = np.minimum(mn[take], self.min[node])
                mx[take] = np.maximum(mx[take], self.max[node])
            left >>= 1
            right >>= 1
        n, mean, m2 = _merge(n, mean, m2, rn, rmean, rm2)
        empty = n == 0
        mean[empty] = np.nan
        mn[empty] = np.nan
        mx[empty] = np.nan
        return n.astype(np.int64), mean, np.sqrt(m2 / np.maximum(n, 1.0)), mn, mx


def _merge(na: np.ndarray, ma: np.ndarray, m2a: np.ndarray, nb: np.ndarray, mb: np.ndarray,
           m2b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise merge of (count, mean, M2); an empty side (count 0) is exact."""
    n = na + nb
    frac = nb / np.maximum(n, 1.0)  # 1.0 exactly when a is empty, 0.0 when b is
    delta = mb - ma
    return n, ma + delta * frac, m2a + m2b + delta * delta * na * frac


def decayed_prefix(t: np.ndarray, x: np.ndarray, half_life: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """For sorted times `t`: Σ_{q<=p} 2^(-(t_p-t_q)/h)·x_q and Σ_{q<=p} 2^(-(t_p-t_q)/h).

    `x` may have one column per series; a NaN value is absent (weight 0).

    Computed as cumulative sums of 2^((t_q - base)/h) in chunks whose exponents stay
    below 500, each chunk carrying the previous one's decayed totals, so nothing
    overflows and each sum is exact to a few ulps of its largest (most recent) terms.
    """
    n = len(t)
    shape = x.shape
    present = ~np.isnan(x)
    x = np.where(present, x, 0.0)
    a, w = np.empty(shape), np.empty(shape)
    e = (np.asarray(t, np.float64) - float(t[0])) / half_life if n else np.empty(0)
    carry_a: np.ndarray | float = 0.0
    carry_w: np.ndarray | float = 0.0
    start, e_prev = 0, 0.0
    while start < n:
        base = e[start]
        stop = max(int(np.searchsorted(e, base + _SPAN, "right")), start + 1)
        rel = (e[start:stop] - base).reshape((-1,) + (1,) * (x.ndim - 1))
        grow = np.exp2(rel)
        decay = np.exp2(-rel)
        carried = np.exp2(-(e[start:stop] - e_prev)).reshape(rel.shape)
        a[start:stop] = np.cumsum(grow * x[start:stop], axis=0) * decay + carry_a * carried
        w[start:stop] = np.cumsum(grow * present[start:stop], axis=0) * decay + carry_w * carried
        carry_a, carry_w, e_prev = a[stop - 1], w[stop - 1], e[stop - 1]
        start = stop
    return a, w
