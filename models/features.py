"""Sensor features from per-sensor state, computed a whole Arrow batch at a time.

Pure functions: the featurize agent, `train` and replay all call `sensor_features`, so
the numbers a model was trained on are the numbers it is served.

For each reading `r` of a sensor, over that sensor's events in offset order:
`r.last` (the value), `r.delta` (minus the previous value; 0 for the first),
`r.mean` and `r.std` (population) over the last `window` values, this one included.

>>> import pyarrow as pa
>>> b = pa.record_batch({"event_id": ["a", "b", "c"], "sensor_id": ["s", "s", "s"],
...                      "event_time": [1, 2, 3], "readings.t": [1.0, 3.0, 5.0]})
>>> out, state = sensor_features(b, {}, window=2)
>>> out.column("t.delta").to_pylist(), out.column("t.mean").to_pylist()
([0.0, 2.0, 2.0], [1.0, 2.0, 4.0])
>>> state["s"]
{'t': [5.0]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["FEATURE_SET", "FEATURES", "SensorState", "feature_names", "sensor_features"]

READING_PREFIX = "readings."
FEATURES = ("last", "delta", "mean", "std")
FEATURE_SET = "sensor-basic.v1"
PASS_THROUGH = ("event_id", "event_time", "source_time", "source_offset", "ingest_time")

#: reading name -> the last `window - 1` values, oldest first
SensorState = dict[str, list[float]]


def feature_names(readings: Sequence[str]) -> list[str]:
    """Stable feature names for readings, in the order models expect them.

    >>> feature_names(["b", "a"])
    ['a.last', 'a.delta', 'a.mean', 'a.std', 'b.last', 'b.delta', 'b.mean', 'b.std']
    """
    return [f"{r}.{f}" for r in sorted(readings) for f in FEATURES]


def _features(history: np.ndarray, values: np.ndarray, window: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Features of one sensor's new values, for several readings at once.

    `history` (h x R) and `values` (k x R) hold no NaN. Returns the features
    (k x R x 4: last, delta, mean, std) and the last `window - 1` rows to keep.
    """
    k, r = values.shape
    h = len(history)
    series = np.concatenate([history, values])
    prev = series[h - 1:-1] if h else np.concatenate([values[:1], values[:-1]])
    delta = values - prev
    if h >= window - 1:  # a full window behind every new value: no padding needed
        windows = sliding_window_view(series[h - window + 1:], window, axis=0)
        mean = windows.sum(axis=2) / window
        std = np.sqrt(((windows - mean[:, :, None]) ** 2).sum(axis=2) / window)
    else:
        padded = np.concatenate([np.full((window - 1, r), np.nan), series])
        windows = sliding_window_view(padded, window, axis=0)[-k:]  # k x R x window
        count = np.sum(~np.isnan(windows), axis=2)
        mean = np.nansum(windows, axis=2) / count
        std = np.sqrt(np.nansum((windows - mean[:, :, None]) ** 2, axis=2) / count)
    return np.stack([values, delta, mean, std], axis=2), series[-(window - 1):]


def sensor_features(batch: pa.RecordBatch, states: Mapping[str, SensorState], window: int
                    ) -> tuple[pa.RecordBatch, dict[str, SensorState]]:
    """Features for every row of a sensor batch, and the new state of each sensor in it.

    Rows keep their order. A reading absent from a row gives null features for it.
    `states` is not modified; the returned dict holds the sensors seen in this batch.
    """
    readings = sorted(n.removeprefix(READING_PREFIX) for n in batch.schema.names
                      if n.startswith(READING_PREFIX))
    n = batch.num_rows
    encoded = pc.dictionary_encode(batch.column("sensor_id"))  # sensor -> small int, in C
    matrix = np.column_stack(
        [batch.column(READING_PREFIX + r).to_numpy(zero_copy_only=False).astype(np.float64)
         for r in readings]) if readings else np.zeros((n, 0))
    out = np.full((n, len(readings) * len(FEATURES)), np.nan)
    new_states: dict[str, SensorState] = {}
    keys = encoded.dictionary.to_pylist()
    inverse = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(keys)))
    start = 0
    for g, key in enumerate(keys):
        rows = order[start:bounds[g]]
        start = bounds[g]
        state = {r: list(v) for r, v in states.get(key, {}).items()}
        block = matrix[rows]
        lengths = {len(state.get(r, [])) for r in readings}
        if len(lengths) == 1 and not np.isnan(block).any():  # every reading in every row
            hist = np.array([state.get(r, []) for r in readings]).reshape(len(readings), -1).T
            feats, keep = _features(hist, block, window)
            out[rows] = feats.reshape(len(rows), -1)
            state = {r: keep[:, j].tolist() for j, r in enumerate(readings)}
        else:  # readings missing from some rows: each reading over the rows that have it
            for j, r in enumerate(readings):
                present = ~np.isnan(block[:, j])
                if not present.any():
                    continue
                hist = np.array(state.get(r, []), dtype=np.float64).reshape(-1, 1)
                feats, keep = _features(hist, block[present, j:j + 1], window)
                out[rows[present], j * 4:(j + 1) * 4] = feats.reshape(-1, 4)
                state[r] = keep[:, 0].tolist()
        new_states[str(key)] = state
    cols: dict[str, pa.Array] = {c: batch.column(c) for c in PASS_THROUGH
                                 if c in batch.schema.names}
    cols["entity_id"] = batch.column("sensor_id")
    for j, name in enumerate(feature_names(readings)):
        col = out[:, j]
        cols[name] = pa.array(col, pa.float64(), mask=np.isnan(col))
    meta = {b"feature_set": FEATURE_SET.encode(), b"window": str(window).encode()}
    return pa.RecordBatch.from_pydict(cols).replace_schema_metadata(meta), new_states
