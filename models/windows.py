"""Exact statistics over many ranges of one series, and event-time decayed sums.

The window maths of the sensor features, vectorised over all queried rows at once:

- `RangeStats` answers count, mean, population std, min and max over half-open index
  ranges `[lo, hi)` of a series by merging the O(log n) nodes of a segment tree that cover
  each range with Chan's pairwise update, which is as stable as a two-pass std (no
  running sum of squares to cancel);
- `decayed_prefix` gives, for every position p of a time-sorted series, the sums
  Σ_{q<=p} 2^(-(t_p - t_q)/h) x_q and Σ_{q<=p} 2^(-(t_p - t_q)/h).

Many series packed one after another (one sensor's buffer each, `starts` their bounds)
are answered in one pass by `packed_stats`, `packed_decayed_prefix` and
`packed_search`, each giving every series bit for bit what it gets alone: the
featurize agent computes all the sensors of a batch together, and a sensor's numbers
do not depend on which others came with it.

>>> s = RangeStats(np.array([1.0, 2.0, 4.0, 8.0]))
>>> n, mean, std, lo, hi = s.query(np.array([0, 1]), np.array([4, 3]))
>>> n[:, 0].tolist(), mean[:, 0].tolist(), lo[:, 0].tolist(), hi[:, 0].tolist()
([4, 2], [3.75, 3.0], [1.0, 2.0], [8.0, 4.0])
>>> a, w = decayed_prefix(np.array([0, 10, 10]), np.array([4.0, 2.0, 1.0]), 10.0)
>>> (a / w).tolist()
[4.0, 2.6666666666666665, 2.0]
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["RangeStats", "decayed_prefix", "packed_decayed_prefix", "packed_search",
           "packed_stats"]

#: the largest exponent of 2 inside one chunk of `decayed_prefix` (2**500 ~ 3e150)
_SPAN = 500.0


class RangeStats:
    """Count, mean, std, min, max over ranges of `x`, from a bottom-up segment tree."""

    def __init__(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        x = x.reshape(len(x), -1)  # one column per series; NaN is an empty leaf
        size = _leaves(len(x))
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


def _leaves(n: int) -> int:
    """The leaves of a `RangeStats` over `n` values: the power of 2 >= n (1 for none)."""
    return 1 << max(0, int(n - 1).bit_length())


def _block(n: np.ndarray) -> np.ndarray:
    """`_leaves` of each series length in `n`: the block a series takes when packed."""
    return np.array([_leaves(k) for k in n.tolist()], np.int64)


def packed_stats(x: np.ndarray, starts: np.ndarray) -> tuple[RangeStats, np.ndarray]:
    """One `RangeStats` for the series `x[starts[g]:starts[g + 1]]`, and the shift that
    maps each series' row indices to the tree's: query `[lo + shift[g], hi + shift[g])`.

    Each series gets a block of as many leaves as its own tree would have, at an offset
    that is a multiple of that size (largest blocks first), so a range inside it is
    covered by the same nodes, merged in the same order, as in its own tree: the same
    floats. Leaves between blocks are empty.

    >>> x = np.array([1.0, 2.0, 4.0, 10.0, 20.0])
    >>> tree, shift = packed_stats(x, np.array([0, 3, 5]))
    >>> n, mean, *_ = tree.query(np.array([0, 3]) + shift, np.array([3, 5]) + shift)
    >>> n[:, 0].tolist(), mean[:, 0].tolist()
    ([3, 2], [2.333333333333333, 15.0])
    >>> mean[0, 0] == RangeStats(x[:3]).query(np.array([0]), np.array([3]))[1][0, 0]
    np.True_
    """
    x = x.reshape(len(x), -1)
    lengths = np.diff(starts)
    blocks = _block(lengths)
    order = np.argsort(-blocks, kind="stable")
    offsets = np.empty(len(blocks), np.int64)
    offsets[order] = np.concatenate([[0], np.cumsum(blocks[order])[:-1]])
    total = int(blocks.sum()) if len(blocks) else 0
    padded = np.full((max(total, 1), x.shape[1]), np.nan)
    rows = np.arange(len(x)) + np.repeat(offsets - starts[:-1], lengths)
    padded[rows] = x
    return RangeStats(padded), offsets - starts[:-1]


def packed_search(t: np.ndarray, starts: np.ndarray, group: np.ndarray, value: np.ndarray,
                  side: Literal["left", "right"] = "right") -> np.ndarray:
    """`np.searchsorted` of each `value[i]` in its own series `t[starts[g]:starts[g+1]]`
    (g = `group[i]`; each series sorted), as an index into `t`.

    >>> packed_search(np.array([1, 5, 9, 2, 3]), np.array([0, 3, 5]),
    ...               np.array([0, 1, 1]), np.array([5, 0, 3]))
    array([2, 3, 5])
    """
    lengths = np.diff(starts)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    base = np.where(lengths > 0, t[np.minimum(starts[:-1], max(len(t) - 1, 0))], 0) \
        if len(t) else np.zeros(len(lengths), np.int64)
    span = np.int64(1) << 47  # times within a series span less than 2^46 ms
    keys = owner * span + (t - base[owner])
    want = group * span + np.clip(value - base[group], -1, span - 1)
    got = np.searchsorted(keys, want, side)
    found: np.ndarray = np.clip(got, starts[group], starts[group + 1])
    return found


def packed_decayed_prefix(t: np.ndarray, x: np.ndarray, starts: np.ndarray,
                          half_life: float) -> tuple[np.ndarray, np.ndarray]:
    """`decayed_prefix` of each series `t[starts[g]:starts[g+1]]`, `x[...]`, packed as
    the input is, each equal bit for bit to that series' own.

    Series of alike length are stacked into one `[series, rows, columns]` block and
    summed along the rows at once; a series spanning more than one chunk of
    `decayed_prefix` (over 500 half-lives) takes its own call.

    >>> t, x = np.array([0, 10, 10, 0, 10]), np.array([[4.0], [2.0], [1.0], [8.0], [2.0]])
    >>> a, w = packed_decayed_prefix(t, x, np.array([0, 3, 5]), 10.0)
    >>> (a / w)[:, 0].tolist()
    [4.0, 2.6666666666666665, 2.0, 8.0, 4.0]
    """
    x = x.reshape(len(x), -1)
    a, w = np.empty(x.shape), np.empty(x.shape)
    lengths = np.diff(starts)
    first = np.asarray(t[np.minimum(starts[:-1], max(len(t) - 1, 0))], np.float64) \
        if len(t) else np.zeros(len(lengths))
    e = (np.asarray(t, np.float64) - np.repeat(first, lengths)) / half_life
    ends = np.maximum(starts[1:] - 1, 0)
    one_chunk = (lengths > 0) & (e[ends] <= _SPAN) if len(t) else lengths > 0
    for g in np.nonzero((lengths > 0) & ~one_chunk)[0].tolist():
        lo, hi = starts[g], starts[g + 1]
        a[lo:hi], w[lo:hi] = decayed_prefix(t[lo:hi], x[lo:hi], half_life)
    blocks = _block(lengths)
    for size in np.unique(blocks[one_chunk]).tolist():
        groups = np.nonzero(one_chunk & (blocks == size))[0]
        n = lengths[groups]
        at = np.arange(size)[None, :]
        valid = at < n[:, None]
        rows = (starts[groups][:, None] + at)[valid]
        stacked_e = np.zeros((len(groups), size, 1))
        stacked_e[valid, 0] = e[rows]
        stacked_x = np.zeros((len(groups), size, x.shape[1]))
        stacked_x[valid] = x[rows]
        present = ~np.isnan(stacked_x)
        stacked_x = np.where(present, stacked_x, 0.0)
        grow = np.exp2(stacked_e)  # the first chunk of decayed_prefix: base 0, and its
        decay = np.exp2(-stacked_e)  # zero carry, whose + 0.0 turns a -0.0 into 0.0
        a[rows] = (np.cumsum(grow * stacked_x, axis=1) * decay + 0.0)[valid]
        w[rows] = (np.cumsum(grow * present, axis=1) * decay + 0.0)[valid]
    return a, w
