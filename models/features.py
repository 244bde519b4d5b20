"""Sensor features over event-time windows, computed a whole Arrow batch at a time.

Pure functions: the featurize agent, `train` and replay all call `sensor_features`, so
the numbers a model was trained on are the numbers it is served.

The definition. Each (sensor, reading) pair is one series. An event e of a sensor at
event time t is *visible* to a later-processed event i when e was accepted before i,
or is i itself. For each reading `r` of event i, over the visible events of its series
with event time at most t_i:

- `r.last` is the value; `r.delta` its difference from the previous value in event time
  (ties: processing order), `r.since_last_s` the seconds between them, `r.rate` the
  delta per second (all three 0 for the first value, `rate` 0 when no time passed);
- for each window W (`r.count_W`, `r.mean_W`, `r.std_W`, `r.min_W`, `r.max_W`,
  `r.z_W`): the statistics of the values with event time in (t_i - W, t_i]; std is the
  population std; z is (value - mean) / std, and 0 when std <= 1e-12·max(1, |mean|);
- for each half-life h, `r.ewma_h`: Σ 2^(-(t_i - t_j)/h)·x_j / Σ 2^(-(t_i - t_j)/h) over
  every visible event j with t_j <= t_i (pandas' `ewm(halflife=h, times=...)` for an
  in-order stream).

For an in-order stream this is pandas' time-based `rolling(W, closed="right")`.
An event earlier than the sensor's latest event time minus `lateness_ms` is rejected
`late`; an event id already accepted for the sensor (within the lateness) is skipped
as a `duplicate`; a reading outside its physical range is rejected `out-of-range`, and
an event time more than `max_future_ms` after its ingest time `future`. Rejected rows
produce no features and leave the state as it was.

>>> import pyarrow as pa
>>> cfg = SensorConfig(windows_ms=(2000,), half_lives_ms=(1000,), lateness_ms=1000)
>>> b = pa.record_batch({"event_id": ["a", "b", "c", "d"], "sensor_id": ["s"] * 4,
...                      "event_time": [0, 1000, 2000, 500], "readings.t": [1.0, 3.0, 5.0, 9.0]})
>>> out, state, skipped = sensor_features(b, {}, cfg)
>>> out.column("t.mean_2s").to_pylist(), out.column("t.delta").to_pylist()
([1.0, 2.0, 4.0], [0.0, 2.0, 2.0])
>>> skipped
[Skip(row=3, reason='late', detail='event time 500 is 1500 ms behind the sensor, allowed 1000')]
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from models.windows import packed_decayed_prefix, packed_search, packed_stats
from schemas.codec import READING_PREFIX

__all__ = [
    "FEATURE_SET",
    "SensorConfig",
    "SensorState",
    "Skip",
    "dump_state",
    "duration_label",
    "feature_names",
    "load_state",
    "parse_duration",
    "sensor_features",
]

FEATURE_SET = "sensor.v2"
PASS_THROUGH = ("event_id", "event_time", "source_time", "source_offset", "ingest_time")
WINDOW_STATS = ("count", "mean", "std", "min", "max", "z")

#: one sensor's state: `tmax` (latest accepted event time), `ids` ([event id, time] of the
#: events within the lateness), `readings`, the time-sorted buffer of the last
#: `horizon_ms`: times `t` and values `x` (rows x readings, NaN where absent), and per
#: reading a row of `evicted`: [time, value] of the last value folded out, then Σw·x and
#: Σw per half-life. `dump_state` / `load_state` turn it into compact JSON and back.
SensorState = dict[str, Any]

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


def parse_duration(text: str) -> int:
    """Milliseconds in `500ms`, `30s`, `15m`, `1h` or `1d`.

    >>> parse_duration("15m"), parse_duration("1h"), parse_duration("250ms")
    (900000, 3600000, 250)
    """
    text = text.strip()
    for unit, ms in sorted(_UNITS, key=lambda u: -len(u[0])):
        number = text.removesuffix(unit)
        if number != text and number.replace(".", "", 1).isdigit():
            return round(float(number) * ms)
    raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 30s, 15m, 1h, 1d)")


def duration_label(ms: int) -> str:
    """The shortest exact label of a duration: the inverse of `parse_duration`.

    >>> duration_label(900000), duration_label(90000), duration_label(1500)
    ('15m', '90s', '1500ms')
    """
    for unit, size in _UNITS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError("unreachable: every duration is a whole number of ms")


@dataclass(frozen=True)
class SensorConfig:
    """Windows, half-lives and input rules of the sensor feature set."""

    windows_ms: tuple[int, ...] = (60_000, 900_000, 3_600_000)
    half_lives_ms: tuple[int, ...] = (300_000, 3_600_000)
    lateness_ms: int = 300_000
    max_future_ms: int = 86_400_000
    #: reading name -> (low, high) allowed; any reading: |value| <= `abs_max`
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    abs_max: float = 1e12

    @property
    def horizon_ms(self) -> int:
        """How far behind its latest event a sensor's values are kept."""
        return self.lateness_ms + max(self.windows_ms)

    @property
    def state_format(self) -> str:
        """What a stored state must have been written with to be read back: the feature
        set and the settings that shape the state (windows, half-lives, lateness).

        >>> SensorConfig(windows_ms=(60000,), half_lives_ms=(1000,)).state_format
        'sensor.v2;60000;1000;300000'
        """
        return ";".join([FEATURE_SET, ",".join(map(str, self.windows_ms)),
                         ",".join(map(str, self.half_lives_ms)), str(self.lateness_ms)])


class Skip(NamedTuple):
    """A row that produced no features: its index in the batch, a reason, details."""

    row: int
    reason: str
    detail: str


def feature_names(readings: Sequence[str], config: SensorConfig) -> list[str]:
    """Stable feature names for readings, in the order models expect them.

    >>> feature_names(["t"], SensorConfig(windows_ms=(60000,), half_lives_ms=(1000,)))
    ['t.last', 't.delta', 't.rate', 't.since_last_s', 't.count_1m', 't.mean_1m', \
't.std_1m', 't.min_1m', 't.max_1m', 't.z_1m', 't.ewma_1s']
    """
    per = ["last", "delta", "rate", "since_last_s"]
    per += [f"{s}_{duration_label(w)}" for w in config.windows_ms for s in WINDOW_STATS]
    per += [f"ewma_{duration_label(h)}" for h in config.half_lives_ms]
    return [f"{r}.{f}" for r in sorted(readings) for f in per]


def sensor_features(batch: pa.RecordBatch, states: Mapping[str, SensorState],
                    config: SensorConfig
                    ) -> tuple[pa.RecordBatch, dict[str, SensorState], list[Skip]]:
    """Features for every accepted row of a sensor batch, new states, and skipped rows.

    Output rows keep batch order. A reading absent from a row gives null features for
    it. `states` is not modified; the returned dict holds the sensors updated here.
    """
    readings = sorted(n.removeprefix(READING_PREFIX) for n in batch.schema.names
                      if n.startswith(READING_PREFIX))
    n = batch.num_rows
    times = batch.column("event_time").to_numpy(zero_copy_only=False).astype(np.int64)
    matrix = np.column_stack(
        [batch.column(READING_PREFIX + r).to_numpy(zero_copy_only=False).astype(np.float64)
         for r in readings]) if readings else np.zeros((n, 0))
    encoded = pc.dictionary_encode(batch.column("sensor_id"))
    keys = [str(k) for k in encoded.dictionary.to_pylist()]
    group = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    reasons = _stateless_checks(batch, times, matrix, readings, config)
    _check_duplicates(batch, group, keys, states, reasons)
    _check_late(times, group, keys, states, reasons, config)
    accepted = np.array([r is None for r in reasons], bool)

    names = feature_names(readings, config)
    width = len(names) // max(len(readings), 1)
    out = np.full((n, len(readings), width), np.nan)
    new_states: dict[str, SensorState] = {}
    order = np.argsort(group, kind="stable")
    order = order[accepted[order]]  # accepted rows by sensor, batch order within each
    bounds = np.searchsorted(group[order], np.arange(len(keys) + 1))
    event_ids = batch.column("event_id").to_pylist()
    works: list[_Work] = []
    for g, key in enumerate(keys):
        rows = order[bounds[g]:bounds[g + 1]]
        if not len(rows):
            continue
        state = states.get(key)
        tmax = int(times[rows].max())
        if state is not None:
            tmax = max(tmax, state["tmax"])
        works.append(_Work(key, rows, state, times[rows], matrix[rows], tmax))
    appended: list[_Work] = []
    for w in works:  # late rows or new readings: this sensor alone, row by row
        if _appends(w, readings):
            appended.append(w)
        else:
            out[w.rows], new_states[w.key] = _sensor(w, readings, config)
    for i in range(0, len(appended), _PACK):  # the rest all together
        part = appended[i:i + _PACK]
        feats, made = _append(part, readings, config)
        out[np.concatenate([w.rows for w in part])] = feats
        new_states.update(zip((w.key for w in part), made, strict=True))
    for w in works:  # the ids within the lateness, for duplicates
        edge = w.tmax - config.lateness_ms
        ids = [p for p in w.state["ids"] if p[1] >= edge] if w.state else []
        ids += [[event_ids[r], t] for r, t in zip(w.rows.tolist(), w.t_new.tolist(),
                                                  strict=True) if t >= edge]
        new_states[w.key]["ids"] = ids
    out = out.reshape(n, len(names))

    keep = pa.array(accepted)
    cols: dict[str, pa.Array] = {c: batch.column(c).filter(keep) for c in PASS_THROUGH
                                 if c in batch.schema.names}
    cols["entity_id"] = batch.column("sensor_id").filter(keep)
    for j, name in enumerate(names):
        col = out[accepted, j]
        cols[name] = pa.array(col, pa.float64(), mask=np.isnan(col))
    meta = {b"feature_set": FEATURE_SET.encode(), b"feature_names": ",".join(names).encode()}
    skipped = [Skip(i, r[0], r[1]) for i, r in enumerate(reasons) if r is not None]
    return (pa.RecordBatch.from_pydict(cols).replace_schema_metadata(meta), new_states,
            skipped)


def dump_state(state: SensorState, **extra: object) -> bytes:
    """One sensor's state as JSON, arrays as base64 of their little-endian bytes.

    >>> s = {"tmax": 5, "ids": [["a", 5]], "readings": ["t"], "t": np.array([5]),
    ...      "x": np.array([[1.5]]), "evicted": np.full((1, 4), np.nan)}
    >>> back = load_state(dump_state(s, asof=7))
    >>> back is not None and (back["asof"], back["x"].tolist(), np.isnan(back["evicted"]).all())
    (7, [[1.5]], np.True_)
    """
    doc = {k: v for k, v in state.items() if k not in _ARRAYS}
    for k, dtype in _ARRAYS.items():
        arr = np.ascontiguousarray(state[k], dtype)
        doc[k] = [list(arr.shape), base64.b64encode(arr.tobytes()).decode()]
    return orjson.dumps(doc | extra)


def load_state(raw: bytes | str, state_format: str | None = None) -> SensorState | None:
    """The inverse of `dump_state`; None for a state this code cannot use: unreadable,
    or (given `state_format`) written with another feature set or window settings.

    >>> load_state(b'{"window": 8}') is None
    True
    """
    try:
        doc: SensorState = orjson.loads(raw)
        if state_format is not None and doc.get("format") != state_format:
            return None
        for k, dtype in _ARRAYS.items():
            shape, data = doc[k]
            doc[k] = np.frombuffer(base64.b64decode(data), dtype).reshape(shape).copy()
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return doc


_ARRAYS = {"t": np.dtype("<i8"), "x": np.dtype("<f8"), "evicted": np.dtype("<f8")}

Reasons = list[tuple[str, str] | None]


def _stateless_checks(batch: pa.RecordBatch, times: np.ndarray, matrix: np.ndarray,
                      readings: list[str], config: SensorConfig) -> Reasons:
    """Out-of-range readings and event times too far in the future."""
    reasons: Reasons = [None] * batch.num_rows
    for j, r in enumerate(readings):
        low, high = config.ranges.get(r, (-config.abs_max, config.abs_max))
        col = matrix[:, j]
        for i in np.nonzero((col < low) | (col > high))[0].tolist():
            reasons[i] = ("out-of-range", f"{r}={col[i]!r} outside [{low!r}, {high!r}]")
    if "ingest_time" in batch.schema.names:
        ingest = batch.column("ingest_time").to_numpy(zero_copy_only=False)
        ingest = np.where(np.isnan(ingest.astype(np.float64)), np.inf, ingest)
        ahead = times - ingest
        for i in np.nonzero(ahead > config.max_future_ms)[0].tolist():
            if reasons[i] is None:
                reasons[i] = ("future", f"event time {times[i]} is {int(ahead[i])} ms after "
                              f"ingest, allowed {config.max_future_ms}")
    return reasons


def _check_duplicates(batch: pa.RecordBatch, group: np.ndarray, keys: list[str],
                      states: Mapping[str, SensorState], reasons: Reasons) -> None:
    """Skip event ids already accepted for the sensor, or earlier in this batch."""
    ids = batch.column("event_id")
    known = [p[0] for k in keys if (s := states.get(k)) for p in s["ids"]]
    seen = pc.is_in(ids, value_set=pa.array(known, pa.string())).to_numpy(
        zero_copy_only=False) if known else np.zeros(len(ids), bool)
    open_rows = np.array([r is None for r in reasons], bool)
    codes = pc.dictionary_encode(ids).indices.to_numpy(zero_copy_only=False)
    _, first = np.unique(codes[open_rows], return_index=True)  # first of each id, in C
    repeated = open_rows.copy()
    repeated[np.nonzero(open_rows)[0][first]] = False
    for i in np.nonzero(open_rows & (seen | repeated))[0].tolist():
        reasons[i] = ("duplicate", f"event id {ids[i].as_py()!r} already processed")


def _check_late(times: np.ndarray, group: np.ndarray, keys: list[str],
                states: Mapping[str, SensorState], reasons: Reasons,
                config: SensorConfig) -> None:
    """Reject events more than the lateness behind their sensor's latest event time."""
    open_rows = np.nonzero([r is None for r in reasons])[0]
    if not len(open_rows):
        return
    g, t = group[open_rows], times[open_rows]
    floor = np.array([(s["tmax"] if (s := states.get(k)) and s["tmax"] is not None
                       else -(1 << 62)) for k in keys], np.int64)
    order = np.argsort(g, kind="stable")
    span = (1 << 46)  # event times are below 2^45 ms (year 3000): groups never mix
    keyed = g[order] * span + np.maximum(t[order], floor[g[order]])
    running = np.empty(len(t), np.int64)
    running[order] = np.maximum.accumulate(keyed) - g[order] * span
    behind = running - t
    for i in np.nonzero(behind > config.lateness_ms)[0].tolist():
        reasons[open_rows[i]] = ("late", f"event time {t[i]} is {int(behind[i])} ms behind "
                                 f"the sensor, allowed {config.lateness_ms}")


class _Work(NamedTuple):
    """One sensor's accepted rows of a batch."""

    key: str
    rows: np.ndarray  # indices into the batch
    state: SensorState | None
    t_new: np.ndarray
    x_new: np.ndarray  # rows x the batch's readings
    tmax: int  # latest event time, with these rows


class _Buffers(NamedTuple):
    """Sensors' time-sorted buffers packed one after another: sensor g's rows are
    `t[starts[g]:starts[g + 1]]`, `x[...]` (rows x readings, NaN where absent)."""

    t: np.ndarray
    x: np.ndarray
    starts: np.ndarray


_PACK = 4096  # sensors computed together, at most (packed_search keys stay in int64)


def _appends(work: _Work, readings: list[str]) -> bool:
    """Whether the rows only extend the sensor's buffer: in time order, none before its
    last row, and the same readings (then `_append` takes it with the others)."""
    t_new, state = work.t_new, work.state
    if len(t_new) > 1 and bool((t_new[1:] < t_new[:-1]).any()):
        return False
    if state is None:
        return True
    return list(state["readings"]) == readings and (
        not len(state["t"]) or int(t_new[0]) >= int(state["t"][-1]))


def _empty_evicted(readings: int, config: SensorConfig) -> np.ndarray:
    return np.array([[np.nan, np.nan] + [0.0] * (2 * len(config.half_lives_ms))] * readings
                    ).reshape(readings, -1)


def _append(works: list[_Work], readings: list[str], config: SensorConfig
            ) -> tuple[np.ndarray, list[SensorState]]:
    """Features of the new rows of sensors whose rows all extend their buffers (rows in
    `works` order x readings x features), and their new states, computed together."""
    empty_t, empty_x = np.empty(0, np.int64), np.empty((0, len(readings)))
    olds = [(w.state["t"], w.state["x"]) if w.state else (empty_t, empty_x) for w in works]
    t = np.concatenate([a for (old_t, _), w in zip(olds, works, strict=True)
                        for a in (old_t, w.t_new)])
    x = np.concatenate([a for (_, old_x), w in zip(olds, works, strict=True)
                        for a in (old_x, w.x_new)]) if readings else np.zeros((len(t), 0))
    old_n = np.array([len(o[0]) for o in olds], np.int64)
    new_n = np.array([len(w.t_new) for w in works], np.int64)
    starts = np.concatenate([[0], np.cumsum(old_n + new_n)])
    group = np.repeat(np.arange(len(works)), new_n)
    new_at = starts[:-1] + old_n  # where each sensor's new rows begin in the buffers
    pos = np.arange(len(group)) + np.repeat(new_at - (np.cumsum(new_n) - new_n), new_n)
    evicted = np.stack([w.state["evicted"] if w.state else _empty_evicted(len(readings), config)
                        for w in works])
    buf = _Buffers(t, x, starts)
    feats, sums, last = _at(buf, pos, group, evicted, config)
    feats[np.isnan(x[pos])] = np.nan
    horizon = np.array([w.tmax for w in works], np.int64) - config.horizon_ms
    buf, evicted = _evict(buf, last, sums, evicted, horizon, config)
    at = buf.starts.tolist()
    made = [{"tmax": w.tmax, "ids": [], "readings": list(readings),  # copies: a view would
             "t": buf.t[at[g]:at[g + 1]].copy(),  # keep every sensor's buffer alive
             "x": buf.x[at[g]:at[g + 1]].copy(), "evicted": evicted[g].copy()}
            for g, w in enumerate(works)]
    return feats, made


def _sensor(work: _Work, readings: list[str], config: SensorConfig
            ) -> tuple[np.ndarray, SensorState]:
    """Features of one sensor's new rows (rows x readings x features), and its new state,
    for rows that do not just extend its buffer: late ones, or new readings.

    The sensor's readings share one time-sorted buffer; a reading absent from a row is
    NaN there and counts for nothing.
    """
    state, t_new, x_new = work.state, work.t_new, work.x_new
    known = list(state["readings"]) if state else []
    names = sorted(set(known) | set(readings))
    cols = [names.index(r) for r in readings]
    if state is None:
        t = np.empty(0, np.int64)
        x = np.empty((0, len(names)))
        evicted = _empty_evicted(len(names), config)
    else:
        t = state["t"]
        x, evicted = state["x"], state["evicted"]
        if names != known:  # a reading new to this sensor: absent from its history
            x = np.column_stack([x[:, known.index(r)] if r in known
                                 else np.full(len(t), np.nan) for r in names])
            empty = _empty_evicted(1, config)[0]
            evicted = np.array([evicted[known.index(r)] if r in known else empty
                                for r in names])
    new = np.full((len(t_new), len(names)), np.nan)
    new[:, cols] = x_new
    parts: list[np.ndarray] = []
    i, k = 0, len(t_new)
    while i < k:  # runs of in-order rows are appended at once; a late one is inserted
        if len(t) and t_new[i] < t[-1]:
            at = int(np.searchsorted(t, t_new[i], "right"))
            t = np.insert(t, at, t_new[i])
            x = np.insert(x, at, new[i], axis=0)
            pos = np.array([at])
            i += 1
        else:
            stop = i + 1
            while stop < k and t_new[stop] >= t_new[stop - 1]:
                stop += 1
            base = len(t)
            t = np.concatenate([t, t_new[i:stop]])
            x = np.concatenate([x, new[i:stop]])
            pos = np.arange(base, len(t))
            i = stop
        buf = _Buffers(t, x, np.array([0, len(t)]))
        feats, sums, last = _at(buf, pos, np.zeros(len(pos), np.int64), evicted[None], config)
        parts.append(feats)
    buf, ev = _evict(buf, last, sums, evicted[None], np.array([work.tmax - config.horizon_ms]),
                     config)
    feats = np.concatenate(parts)[:, cols]
    feats[np.isnan(x_new)] = np.nan
    return feats, {"tmax": work.tmax, "ids": [], "readings": names, "t": buf.t, "x": buf.x,
                   "evicted": ev[0]}


def _at(buf: _Buffers, pos: np.ndarray, group: np.ndarray, evicted: np.ndarray,
        config: SensorConfig
        ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Features (rows x readings x features) of the buffer rows at `pos` (`group`: their
    sensors; `evicted`: each sensor's, sensors x readings x 2 + 2·half-lives); the
    decayed prefix sums of each half-life over the buffers; and for each buffer row and
    reading, the last row of its buffer up to it with a value (-1: none)."""
    t, x, starts = buf
    present = ~np.isnan(x)
    idx = np.where(present, np.arange(len(t))[:, None], -1)
    last = np.maximum.accumulate(idx, axis=0)
    last = np.where(last >= np.repeat(starts[:-1], np.diff(starts))[:, None], last, -1)
    prev = np.where((pos > starts[group])[:, None], last[np.maximum(pos - 1, 0)], -1)
    in_buffer = prev >= 0
    ev = evicted[group]
    prev_x = np.where(in_buffer, x[np.maximum(prev, 0), np.arange(x.shape[1])], ev[:, :, 1])
    prev_t = np.where(in_buffer, t[np.maximum(prev, 0)], ev[:, :, 0])
    value = x[pos]
    has_prev = ~np.isnan(prev_t)
    delta = np.where(has_prev, value - prev_x, 0.0)
    gap_s = np.where(has_prev, (t[pos][:, None] - prev_t) / 1000.0, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(gap_s > 0, delta / gap_s, 0.0)
    cols = [value, delta, rate, gap_s]
    k, windows = len(pos), config.windows_ms
    lo = np.concatenate([packed_search(t, starts, group, t[pos] - w) for w in windows])
    tree, shift = packed_stats(x, starts)
    moved = np.tile(shift[group], len(windows))
    stats = tree.query(lo + moved, np.tile(pos + 1, len(windows)) + moved)  # all at once
    for i in range(len(windows)):
        count, mean, std, mn, mx = (a[i * k:(i + 1) * k] for a in stats)
        flat = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(flat, 0.0, (value - mean) / std)
        cols += [count.astype(np.float64), mean, std, mn, mx, z]
    sums = [packed_decayed_prefix(t, x, starts, float(h)) for h in config.half_lives_ms]
    for j, h in enumerate(config.half_lives_ms):
        a, w = sums[j]
        decay = np.nan_to_num(np.exp2(-(t[pos][:, None] - ev[:, :, 0]) / h))
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 for absent readings
            cols.append((a[pos] + ev[:, :, 2 + 2 * j] * decay)
                        / (w[pos] + ev[:, :, 3 + 2 * j] * decay))
    return np.stack(cols, axis=2), sums, last


def _evict(buf: _Buffers, last: np.ndarray, sums: list[tuple[np.ndarray, np.ndarray]],
           evicted: np.ndarray, horizon: np.ndarray, config: SensorConfig
           ) -> tuple[_Buffers, np.ndarray]:
    """Fold each sensor's rows at or before its `horizon` into its readings' decayed sums
    and last value (`last`, `sums`: what `_at` gave for these buffers).

    No event still acceptable has a window reaching back to them; the last value of
    each reading stays as the predecessor (for `delta`) of the next.
    """
    t, x, starts = buf
    sensors = np.arange(len(starts) - 1)
    cut = packed_search(t, starts, sensors, horizon, "right")
    folding = np.nonzero(cut > starts[:-1])[0]
    if not len(folding):
        return buf, evicted
    evicted = evicted.copy()
    ends = last[cut[folding] - 1]  # each reading's last row with a value, or -1
    has = ends >= 0
    at = np.maximum(ends, 0)
    columns = np.arange(x.shape[1])
    ev = evicted[folding]
    t_ev = np.where(has, t[at], np.nan)
    for j, h in enumerate(config.half_lives_ms):
        a, w = sums[j]
        with np.errstate(invalid="ignore"):
            decay = np.where(np.isnan(ev[:, :, 0]), 0.0, np.exp2(-(t_ev - ev[:, :, 0]) / h))
        for k, prefix in ((2 + 2 * j, a), (3 + 2 * j, w)):
            ev[:, :, k] = np.where(has, ev[:, :, k] * decay + prefix[at, columns], ev[:, :, k])
    ev[:, :, 0] = np.where(has, t_ev, ev[:, :, 0])
    ev[:, :, 1] = np.where(has, x[at, columns], ev[:, :, 1])
    evicted[folding] = ev
    lengths = np.diff(starts)
    keep = np.arange(len(t)) >= np.repeat(cut, lengths)
    return _Buffers(t[keep], x[keep], np.concatenate([[0], np.cumsum(starts[1:] - cut)])), \
        evicted
