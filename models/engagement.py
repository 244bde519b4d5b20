"""Per-entity engagement features: exponentially decayed counts, smoothed rates, recency.

A pure function of an Arrow batch and the state of the entities it touches, so the
featurize agent, `train` and replay compute the very same numbers.

Definition. An event is an *impression* if its kind is `impression` or `rating`, and a
*positive* if its kind is `click` or `purchase`, or it is a `rating` with
`value >= positive_rating`. Each of three scopes keeps its own state per entity:
`user` (key `user_id`), `item` (key `item_id`) and `user_category` (key
`user_id + "\\x1f" + category`; an event with a null category gets cold-start values
there and updates nothing). Times are in seconds below (event times are Unix ms >= 0).

For each scope and half-life `h` (labelled `10m`, `1h`, `1d`, ...), the features of an
event `e` at time `t` read the entity's state *before* `e` is applied (no label leakage),
with `T = max(t, latest event time already applied to the entity)`:

- `imp_<h>`: the sum over earlier impressions `j` of the entity of `2**(-(T - t_j) / h)`;
- `pos_<h>`: the same over earlier positives;
- `rate_<h>`: `(pos + alpha) / (max(imp, pos) + alpha + beta)`, a Beta-prior smoothed
  rate (cold start: `alpha / (alpha + beta)`);
- `recency_s` (one per scope): `min(cap, T - time of the entity's latest positive)`,
  `cap` when it never had one.

Applying `e` moves the entity's reference time to `T`, decays its sums to `T`, adds
`2**(-(T - t) / h)` (1 in order) for each count `e` contributes to, and sets the latest
positive time to `max(previous, t)` if `e` is positive. Events of one entity in a batch
are applied in row order, so a later row sees the earlier ones.

Computation is in columns: rows are grouped by entity with a stable sort, and the
recurrence `S_k = a_k * S_(k-1) + b_k` (`a_k` the decay between consecutive reference
times, `b_k` the event's own weight) is solved for all entities at once by a
log-depth prefix scan. Every factor is at most 1, so nothing overflows whatever the
time span, and no Python code runs per event (only per entity, to read and write state).

>>> import pyarrow as pa
>>> b = pa.record_batch({
...     "event_id": ["e1", "e2"], "user_id": ["u1", "u1"], "item_id": ["a", "b"],
...     "category": ["Drama", None], "event_time": pa.array([0, 600_000], pa.int64()),
...     "kind": ["rating", "click"], "value": [5.0, 1.0]})
>>> config = EngagementConfig(half_lives_s=(600.0,))
>>> out, states = engagement_features(b, {}, config)
>>> [out.column(f"user.{s}").to_pylist() for s in ("imp_10m", "pos_10m", "rate_10m")]
[[0.0, 0.5], [0.0, 0.5], [0.5, 0.6]]
>>> out.column("user.recency_s").to_pylist()
[2592000.0, 600.0]
>>> states["u:u1"]  # [t_ref_ms, last_positive_ms, imp per h..., pos per h...]
[600000.0, 600000.0, 0.5, 1.5]
>>> sorted(states) == sorted(engagement_state_keys(b))
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from models.features import PASS_THROUGH

__all__ = [
    "ENGAGEMENT_FEATURE_SET",
    "SCOPES",
    "EngagementConfig",
    "EntityState",
    "engagement_feature_names",
    "engagement_features",
    "engagement_state_keys",
    "half_life_label",
    "positive_events",
]

ENGAGEMENT_FEATURE_SET = "engagement.v1"
SCOPES = ("user", "item", "user_category")
IMPRESSION_KINDS = ("impression", "rating")
POSITIVE_KINDS = ("click", "purchase")
KEY_SEP = "\x1f"
_PREFIXES = {"user": "u:", "item": "i:", "user_category": "uc:"}
_NEVER = -1.0  # last-positive time of an entity that never had a positive

#: [reference time ms, last positive time ms or -1, imp per half-life..., pos per half-life...]
EntityState = list[float]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class EngagementConfig:
    """Half-lives (seconds), the Beta prior of the rates, what rating is positive, the cap."""

    half_lives_s: tuple[float, ...] = (600.0, 3600.0, 86400.0)
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    positive_rating: float = 4.0
    recency_cap_s: float = 30 * 86400.0

    @property
    def state_format(self) -> str:
        """What a stored state must have been written with to be read back: the feature
        set and the half-lives (a state holds one sum per half-life).

        >>> EngagementConfig(half_lives_s=(600.0, 3600.0)).state_format
        'engagement.v1;600.0,3600.0'
        """
        return f"{ENGAGEMENT_FEATURE_SET};{','.join(map(str, self.half_lives_s))}"

    def __post_init__(self) -> None:
        if not self.half_lives_s:
            raise ValueError("half_lives_s must name at least one half-life")
        if not all(math.isfinite(h) and h > 0 for h in self.half_lives_s):
            raise ValueError(f"half-lives must be finite and positive: {self.half_lives_s}")
        labels = [half_life_label(h) for h in self.half_lives_s]
        if len(set(labels)) != len(labels):
            raise ValueError(f"half-lives must differ: {self.half_lives_s}")
        if not (self.prior_alpha > 0 and self.prior_beta > 0):
            raise ValueError("prior_alpha and prior_beta must be positive")
        if not (math.isfinite(self.recency_cap_s) and self.recency_cap_s > 0):
            raise ValueError("recency_cap_s must be finite and positive")


def half_life_label(seconds: float) -> str:
    """The shortest of s/m/h/d labels that states `seconds` exactly.

    >>> [half_life_label(s) for s in (30, 600, 3600, 5400, 86400, 2.5)]
    ['30s', '10m', '1h', '90m', '1d', '2.5s']
    """
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if float(seconds) % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def engagement_feature_names(config: EngagementConfig) -> list[str]:
    """Feature names in the order of the output columns.

    >>> engagement_feature_names(EngagementConfig(half_lives_s=(3600.0,)))[:4]
    ['user.imp_1h', 'user.pos_1h', 'user.rate_1h', 'user.recency_s']
    """
    names = []
    for scope in SCOPES:
        for h in config.half_lives_s:
            label = half_life_label(h)
            names += [f"{scope}.imp_{label}", f"{scope}.pos_{label}", f"{scope}.rate_{label}"]
        names.append(f"{scope}.recency_s")
    return names


def _string(batch: pa.RecordBatch, name: str) -> pa.Array:
    col = batch.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col if pa.types.is_string(col.type) else col.cast(pa.string())


def _scope_keys(batch: pa.RecordBatch) -> list[tuple[str, pa.Array]]:
    """(state-key prefix, entity key per row, null where the scope does not apply)."""
    user = _string(batch, "user_id")
    uc = pc.binary_join_element_wise(user, _string(batch, "category"), KEY_SEP)
    return [("u:", user), ("i:", _string(batch, "item_id")), ("uc:", uc)]


def _encode(keys: pa.Array, prefix: str) -> tuple[I64, list[str]]:
    """Entity code per row (-1 where null) and the state key of each code."""
    encoded = pc.dictionary_encode(keys)
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    names = pc.binary_join_element_wise(prefix, encoded.dictionary, "").to_pylist()
    return codes, names


def engagement_state_keys(batch: pa.RecordBatch) -> list[str]:
    """The state keys a batch touches (users, then items, then user-categories).

    >>> b = pa.record_batch({"user_id": ["7", "7"], "item_id": ["1", "2"],
    ...                      "category": ["Drama", None]})
    >>> engagement_state_keys(b)
    ['u:7', 'i:1', 'i:2', 'uc:7\\x1fDrama']
    """
    out: list[str] = []
    for prefix, keys in _scope_keys(batch):
        out += _encode(keys, prefix)[1]
    return out


def _segmented_cummax(values: F64, group: I64, steps: int) -> F64:
    """Running maximum along the last axis within each run of equal `group` (sorted).

    `values` hold whole numbers (ms). One pass when shifting each group above the one
    before stays exact in float64; otherwise `steps` doubling steps.
    """
    lo, span = float(values.min()), float(values.max() - values.min() + 1)
    if span * (int(group[-1]) + 1) < 2.0**53:
        shift = group.astype(np.float64) * span - lo
        running: F64 = np.maximum.accumulate(values + shift, axis=-1)
        return running - shift
    m = values.copy()
    d = 1
    for _ in range(steps):
        m[..., d:] = np.where(group[d:] == group[:-d], np.maximum(m[..., d:], m[..., :-d]),
                              m[..., d:])
        d *= 2
    return m


def _linear_scan(a: F64, b: F64, steps: int) -> F64:
    """Solve y_k = a_k * y_(k-1) + b_k along the last axis (y_(-1) = 0); a broadcasts to b.

    Hillis-Steele doubling: after the step with offset d, (a_k, y_k) compose the rows
    (k - 2d, k]; an `a` of 0 (an entity's first row) cuts the chain there. `steps` must
    reach the longest chain: 2**steps >= its length.
    """
    a, y = a.copy(), b.copy()
    d = 1
    for _ in range(steps):
        y[..., d:] += a[..., d:] * y[..., :-d]
        a[..., d:] *= a[..., :-d]
        d *= 2
    return y


def _scope_features(t_ms: F64, flags: F64, codes: I64, init: F64, config: EngagementConfig
                    ) -> tuple[I64, F64, F64]:
    """Features of the rows of one scope, and the new state of each entity.

    Returns the rows in the order the features come in (grouped by entity), the features
    ((3H + 1) x n) and the states (G x (2 + 2H)).

    `t_ms` event times, `flags` (2 x n) impression and positive indicators, `codes` the
    entity of each row (every one of 0..G-1 occurs), `init` (G x (2 + 2H)) each entity's
    state before the batch, with a reference time of -inf for an entity never seen.
    """
    n, ng, nh = len(t_ms), len(init), len(config.half_lives_s)
    hl = np.asarray(config.half_lives_s, dtype=np.float64)[:, None] * 1000.0  # H x 1, ms
    small = codes.astype(np.uint16) if ng <= 1 << 16 else codes  # radix-sorted, O(n)
    order = np.argsort(small, kind="stable")  # by entity, row order within each
    group, t, x = codes[order], t_ms[order], flags[:, order]
    sizes = np.bincount(group, minlength=ng)
    first = np.cumsum(sizes) - sizes  # each entity's first row
    final = first + sizes - 1
    steps = int(sizes.max() - 1).bit_length()

    # reference time T and latest positive time after each row: running maxima within
    # the entity, its state before the batch folded into its first row
    run = np.stack([t, np.where(x[1] > 0, t, _NEVER)])
    run[:, first] = np.maximum(run[:, first], init[:, :2].T)
    ref, last_pos = run = _segmented_cummax(run, group, steps)
    ref_before, pos_before = np.empty_like(run)
    ref_before[1:], pos_before[1:] = ref[:-1], last_pos[:-1]
    ref_before[first], pos_before[first] = init[:, 0], init[:, 1]

    # decayed sums (2 x H x n: imp, pos): S_k = decay_k * S_(k-1) + own weight of row k
    decay = np.exp2((ref_before - ref) / hl)  # H x n; 0 after a -inf reference
    own = np.repeat(x[:, None, :], nh, axis=1)  # each row's own weight: 1 in time order
    if (t < ref).any():  # a row after a later event of its entity: 2**(-(T - t) / h)
        own *= np.exp2((t - ref) / hl)
    sums0 = init[:, 2:].reshape(ng, 2, nh).transpose(1, 2, 0)  # 2 x H x G
    own[:, :, first] += decay[:, first] * sums0
    cut = decay.copy()
    cut[:, first] = 0.0
    after = _linear_scan(cut, own, steps)  # sums after each row, at its reference time
    before = np.empty_like(after)
    before[:, :, 1:] = after[:, :, :-1]
    before[:, :, first] = sums0

    alpha, beta, cap = config.prior_alpha, config.prior_beta, config.recency_cap_s
    feats = np.empty((3 * nh + 1, n))
    per_h = feats[:3 * nh].reshape(nh, 3, n)  # a view: imp, pos, rate for each half-life
    imp, pos = np.multiply(decay, before[0], out=per_h[:, 0]), per_h[:, 1]
    np.multiply(decay, before[1], out=pos)  # sums before each row, decayed to its T
    np.divide(pos + alpha, np.maximum(imp, pos) + alpha + beta, out=per_h[:, 2])
    feats[-1] = np.where(pos_before < 0, cap, np.minimum(cap, (ref - pos_before) / 1000.0))
    state = np.empty_like(init)
    state[:, 0], state[:, 1] = ref[final], last_pos[final]
    state[:, 2:] = after[:, :, final].reshape(2 * nh, ng).T
    return order, feats, state


def _cold(config: EngagementConfig) -> list[float]:
    """Feature values of an entity with no history, in one scope's column order."""
    rate = config.prior_alpha / (config.prior_alpha + config.prior_beta)
    return [0.0, 0.0, rate] * len(config.half_lives_s) + [config.recency_cap_s]


def _event_flags(batch: pa.RecordBatch, config: EngagementConfig) -> F64:
    kind = _string(batch, "kind")
    impression = pc.is_in(kind, pa.array(IMPRESSION_KINDS)).fill_null(False)
    good_rating = pc.and_(pc.equal(kind, "rating"),
                          pc.greater_equal(batch.column("value"), config.positive_rating))
    positive = pc.or_(pc.is_in(kind, pa.array(POSITIVE_KINDS)), good_rating.fill_null(False))
    return np.stack([  # 2 x n: impression, positive
        impression.to_numpy(zero_copy_only=False),
        positive.fill_null(False).to_numpy(zero_copy_only=False),
    ]).astype(np.float64)


def positive_events(batch: pa.RecordBatch, config: EngagementConfig) -> Bool:
    """Which events are positives (the definition above): the engagement model's label.

    >>> b = pa.record_batch({"kind": ["rating", "rating", "click", "impression"],
    ...                      "value": [4.0, 3.5, None, None]})
    >>> positive_events(b, EngagementConfig()).tolist()
    [True, False, True, False]
    """
    positive: Bool = _event_flags(batch, config)[1] > 0
    return positive


def engagement_features(batch: pa.RecordBatch, states: Mapping[str, EntityState],
                        config: EngagementConfig
                        ) -> tuple[pa.RecordBatch, dict[str, EntityState]]:
    """Engagement features for every row of a batch, and the new state of every key touched.

    Rows keep their order; `entity_id` is the user id, beside `item_id`. `states` (state
    key -> `EntityState`) is not modified; keys are `"u:" + user`, `"i:" + item` and
    `"uc:" + user + "\\x1f" + category`.
    """
    for name in ("user_id", "item_id", "event_time", "kind"):
        if batch.column(name).null_count:
            raise ValueError(f"engagement events need a {name} in every row")
    n, nh = batch.num_rows, len(config.half_lives_s)
    width = 3 * nh + 1
    t_ms = batch.column("event_time").to_numpy(zero_copy_only=False).astype(np.float64)
    flags = _event_flags(batch, config)
    cold_state = [-math.inf, _NEVER] + [0.0] * (2 * nh)
    feats = np.empty((3 * width, n))
    new_states: dict[str, EntityState] = {}
    for s, (prefix, keys) in enumerate(_scope_keys(batch)):
        cols = slice(s * width, (s + 1) * width)
        codes, names = _encode(keys, prefix)
        feats[cols] = np.asarray(_cold(config))[:, None]
        if not names:
            continue
        rows = np.flatnonzero(codes >= 0)
        init = np.array([states.get(k, cold_state) for k in names], dtype=np.float64)
        if init.shape != (len(names), 2 + 2 * nh):
            raise ValueError(f"a {prefix} state does not fit {nh} half-lives")
        order, out, state = _scope_features(t_ms[rows], flags[:, rows], codes[rows], init,
                                            config)
        feats[cols, rows[order]] = out
        new_states.update(zip(names, state.tolist(), strict=True))

    columns: dict[str, pa.Array] = {c: batch.column(c) for c in PASS_THROUGH
                                    if c in batch.schema.names}
    columns["entity_id"] = batch.column("user_id")
    columns["item_id"] = batch.column("item_id")
    names = engagement_feature_names(config)
    for j, name in enumerate(names):
        columns[name] = pa.array(feats[j], pa.float64())
    meta = {b"feature_set": ENGAGEMENT_FEATURE_SET.encode(),
            b"feature_names": ",".join(names).encode()}
    return pa.RecordBatch.from_pydict(columns).replace_schema_metadata(meta), new_states
