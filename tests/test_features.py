"""Sensor features: equal to a pandas reference, and the same however the stream is batched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from models.datasets import shuttle
from models.features import FEATURES, SensorState, feature_names, sensor_features

WINDOW = 8


def reference(events: pd.DataFrame, window: int) -> pd.DataFrame:
    """The same features, written the obvious way with pandas groupby/rolling."""
    out = pd.DataFrame(index=events.index)
    readings = sorted(c.removeprefix("readings.") for c in events if c.startswith("readings."))
    for r in readings:
        g = events.groupby("sensor_id")[f"readings.{r}"]
        out[f"{r}.last"] = events[f"readings.{r}"]
        out[f"{r}.delta"] = g.diff().fillna(0.0)
        out[f"{r}.mean"] = g.transform(lambda s: s.rolling(window, min_periods=1).mean())
        # pandas' own rolling std is an online sum that leaves ~1e-6 where the exact answer
        # is 0, so the reference takes each window's two-pass np.std instead
        out[f"{r}.std"] = g.transform(
            lambda s: s.rolling(window, min_periods=1).apply(np.std, raw=True))
    return out


def streamed(table: pa.Table, cuts: list[int], window: int) -> pd.DataFrame:
    """Features computed batch by batch, state carried between batches like the agent."""
    state: dict[str, SensorState] = {}
    parts = []
    bounds = [0, *sorted(set(cuts)), table.num_rows]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi <= lo:
            continue
        batch = table.slice(lo, hi - lo).combine_chunks().to_batches()[0]
        out, new = sensor_features(batch, state, window)
        state.update(new)
        parts.append(out.to_pandas())
    return pd.concat(parts, ignore_index=True)


def test_features_equal_the_pandas_reference_on_shuttle() -> None:
    events = shuttle(limit=5000, sensors=3)
    got = streamed(events, [17, 1000, 1001, 3333], WINDOW)
    want = reference(events.to_pandas(), WINDOW)
    names = feature_names([f"f{i}" for i in range(1, 10)])
    assert list(got.columns[-len(names):]) == names
    np.testing.assert_allclose(got[names].to_numpy(), want[names].to_numpy(), rtol=0, atol=1e-9)
    assert got["event_id"].tolist() == events.column("event_id").to_pylist()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), sensors=st.integers(1, 4), window=st.integers(2, 6),
       cuts=st.lists(st.integers(0, 60), max_size=5), seed=st.integers(0, 2**32 - 1))
def test_batching_never_changes_features(n: int, sensors: int, window: int, cuts: list[int],
                                         seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n)
    values[rng.random(n) < 0.2] = np.nan  # readings missing from some events
    table = pa.table({"event_id": [f"e{i}" for i in range(n)],
                      "sensor_id": [f"s{rng.integers(sensors)}" for _ in range(n)],
                      "event_time": np.arange(n), "readings.x": pa.array(values,
                                                                        mask=np.isnan(values))})
    whole = streamed(table, [], window)
    parts = streamed(table, [c for c in cuts if c < n], window)
    cols = [f"x.{f}" for f in FEATURES]
    np.testing.assert_allclose(parts[cols].to_numpy(float), whole[cols].to_numpy(float),
                               rtol=0, atol=1e-12)
    assert (np.isnan(whole["x.last"].to_numpy(float)) == np.isnan(values)).all()
