"""Sensor features: equal to a pandas reference on real data, whatever the batching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from models.features import (
    SensorConfig,
    SensorState,
    Skip,
    dump_state,
    feature_names,
    load_state,
    sensor_features,
)
from tests.data import nab, occupancy
from tests.reference import _one_row, late_rows, sensor_reference

CONFIG = SensorConfig()  # 1m, 15m, 1h windows; 5m and 1h half-lives; 5m lateness


def streamed(table: pa.Table, cuts: list[int], config: SensorConfig
             ) -> tuple[pd.DataFrame, list[Skip]]:
    """Features computed batch by batch, state carried between batches like the agent."""
    state: dict[str, SensorState] = {}
    parts, skipped = [], []
    bounds = [0, *sorted(set(cuts)), table.num_rows]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi <= lo:
            continue
        batch = table.slice(lo, hi - lo).combine_chunks().to_batches()[0]
        out, new, skips = sensor_features(batch, state, config)
        state.update(new)
        parts.append(out.to_pandas())
        skipped += [s._replace(row=s.row + lo) for s in skips]
    return pd.concat(parts, ignore_index=True).set_index("event_id"), skipped


def assert_equal_to_reference(table: pa.Table, config: SensorConfig, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cuts = sorted(rng.integers(0, table.num_rows, 40).tolist())
    got, _ = streamed(table, cuts, config)
    want = sensor_reference(table.to_pandas(), config)
    readings = [c.removeprefix("readings.") for c in table.column_names
                if c.startswith("readings.")]
    names = feature_names(readings, config)
    assert list(got.columns[-len(names):]) == names
    assert got.index.tolist() == want.index.tolist()
    np.testing.assert_allclose(got[names].to_numpy(float), want[names].to_numpy(float),
                               rtol=1e-9, atol=1e-9)


def test_nab_features_equal_the_pandas_reference_out_of_order_rows_included() -> None:
    # an hour of lateness accepts machine_temperature's 55-minute step back in time
    config = SensorConfig(lateness_ms=3_600_000)
    table = nab()
    assert not late_rows(table.to_pandas(), config).any()
    assert_equal_to_reference(table, config, seed=1)


def test_nab_rows_beyond_the_lateness_are_skipped_as_late() -> None:
    table = nab()
    _, skipped = streamed(table, [5000, 22_700], CONFIG)
    late = np.nonzero(late_rows(table.to_pandas(), CONFIG))[0].tolist()
    assert len(late) == 10  # a 55-minute step back: 02:00..02:45 are over 5 minutes late
    assert [s.row for s in skipped] == late
    assert {s.reason for s in skipped} == {"late"}


def test_occupancy_features_equal_the_pandas_reference() -> None:
    assert_equal_to_reference(occupancy(), CONFIG, seed=2)


def test_duplicates_are_processed_once_and_bad_rows_are_skipped() -> None:
    cfg = SensorConfig(ranges={"t": (-50.0, 150.0)}, max_future_ms=60_000)
    b = pa.record_batch({"event_id": ["a", "b", "a", "c", "d"], "sensor_id": ["s"] * 5,
                         "event_time": [0, 1000, 0, 2000, 10_000_000],
                         "ingest_time": [5000] * 5, "readings.t": [1.0, 3.0, 1.0, 900.0, 2.0]})
    out, state, skipped = sensor_features(b, {}, cfg)
    assert out.column("event_id").to_pylist() == ["a", "b"]
    assert [(s.row, s.reason) for s in skipped] == [(2, "duplicate"), (3, "out-of-range"),
                                                    (4, "future")]
    again = pa.record_batch({"event_id": ["b", "e"], "sensor_id": ["s", "s"],
                             "event_time": [1000, 3000], "readings.t": [3.0, 4.0]})
    out2, _, skipped2 = sensor_features(again, state, cfg)
    assert out2.column("event_id").to_pylist() == ["e"]
    assert [(s.row, s.reason) for s in skipped2] == [(0, "duplicate")]
    assert out2.column("t.count_1m").to_pylist() == [3.0]  # a, b and e: nothing twice


def test_first_event_of_a_sensor_has_defined_values() -> None:
    b = pa.record_batch({"event_id": ["a"], "sensor_id": ["new"], "event_time": [7],
                         "readings.t": [2.5]})
    out, _, _ = sensor_features(b, {}, CONFIG)
    row = out.to_pylist()[0]
    assert (row["t.delta"], row["t.rate"], row["t.since_last_s"]) == (0.0, 0.0, 0.0)
    assert (row["t.count_1h"], row["t.std_1h"], row["t.z_1h"], row["t.ewma_5m"]) == \
        (1.0, 0.0, 0.0, 2.5)


SMALL = SensorConfig(windows_ms=(3000, 10_000), half_lives_ms=(2000,), lateness_ms=4000)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 50), sensors=st.integers(1, 3),
       jitter=st.lists(st.integers(0, 6000), min_size=50, max_size=50),
       cuts=st.lists(st.integers(0, 50), max_size=5), seed=st.integers(0, 2**32 - 1))
def test_random_orders_within_lateness_match_the_definition(
        n: int, sensors: int, jitter: list[int], cuts: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    times = np.arange(n) * 1000 - np.array(jitter[:n])  # up to 6 s out of order
    values = np.round(rng.normal(size=n), 3)
    values[rng.random(n) < 0.15] = np.nan  # readings missing from some events
    table = pa.table({"event_id": [f"e{i}" for i in range(n)],
                      "sensor_id": [f"s{rng.integers(sensors)}" for _ in range(n)],
                      "event_time": pa.array(times, pa.int64()),
                      "readings.x": pa.array(values, mask=np.isnan(values))})
    whole, skipped = streamed(table, [], SMALL)
    parts, skipped_parts = streamed(table, [c for c in cuts if c < n], SMALL)
    names = feature_names(["x"], SMALL)
    pd.testing.assert_frame_equal(parts, whole, rtol=1e-12, atol=1e-12)
    assert skipped_parts == skipped
    frame = table.to_pandas()
    late = late_rows(frame, SMALL)
    assert [s.row for s in skipped] == np.nonzero(late)[0].tolist()
    for _, g in frame[~late].groupby("sensor_id"):  # every row from its definition
        g = g[g["readings.x"].notna()]
        t, x = g["event_time"].to_numpy(np.int64), g["readings.x"].to_numpy(float)
        for i, eid in enumerate(g["event_id"]):
            want = _one_row(t, x, i, SMALL)
            got = whole.loc[eid]
            np.testing.assert_allclose([got[f"x.{k}"] for k in want], list(want.values()),
                                       rtol=1e-9, atol=1e-9)
    assert all(whole.loc[e, names].isna().all()
               for e in frame.loc[~late & frame["readings.x"].isna(), "event_id"])


def test_a_batch_with_no_rows_left_gives_an_empty_feature_batch() -> None:
    b = pa.record_batch({"event_id": pa.array([], pa.string()),
                         "sensor_id": pa.array([], pa.string()),
                         "event_time": pa.array([], pa.int64()),
                         "readings.t": pa.array([], pa.float64())})
    out, state, skipped = sensor_features(b, {}, CONFIG)
    assert (out.num_rows, state, skipped) == (0, {}, [])
    assert out.schema.names[-1] == "t.ewma_1h"


def test_a_state_from_other_settings_is_not_read_back() -> None:
    b = pa.record_batch({"event_id": ["a"], "sensor_id": ["s"], "event_time": [7],
                         "readings.t": [2.5]})
    _, state, _ = sensor_features(b, {}, CONFIG)
    raw = dump_state(state["s"], format=CONFIG.state_format)
    assert load_state(raw, CONFIG.state_format) is not None
    other = SensorConfig(half_lives_ms=(60_000,))  # one EWMA sum fewer per reading
    assert load_state(raw, other.state_format) is None
    assert load_state(b'{"f1": [1.0, 2.0]}', CONFIG.state_format) is None  # older code's shape


def test_a_sensors_features_do_not_depend_on_the_sensors_computed_with_it() -> None:
    """featurize computes the sensors of a batch together (packed); each sensor's numbers
    are the floats it gets alone, through eviction, late rows and a reading it gains."""
    rng = np.random.default_rng(7)
    n, config = 4000, SensorConfig(windows_ms=(3000, 10_000), half_lives_ms=(2000, 500),
                                   lateness_ms=4000)
    times = np.cumsum(rng.integers(0, 400, n))
    times = np.where(rng.random(n) < 0.05, times - rng.integers(0, 5000, n), times)
    a, b = rng.normal(size=n), rng.normal(size=n) * 100
    a[rng.random(n) < 0.1] = np.nan
    sensors = np.array([f"s{k}" for k in rng.integers(0, 9, n)])
    table = pa.table({"event_id": [f"e{i}" for i in range(n)], "sensor_id": sensors,
                      "event_time": pa.array(times, pa.int64()),
                      "readings.a": pa.array(a, mask=np.isnan(a)),
                      "readings.b": pa.array(b, mask=np.isnan(b))})
    batch_of = np.searchsorted(np.sort(rng.integers(0, n, 60)), np.arange(n), "right")
    together = streamed_by(table, batch_of, config)
    alone = pd.concat([streamed_by(table.filter(pa.array(sensors == s)),
                                   batch_of[sensors == s], config)
                       for s in np.unique(sensors)]).loc[together.index]
    assert len(together) > 0.9 * n
    pd.testing.assert_frame_equal(alone, together, check_exact=True)


def streamed_by(table: pa.Table, batch_of: np.ndarray, config: SensorConfig) -> pd.DataFrame:
    """`streamed` with each row's batch given: rows of batch k together, k ascending;
    reading b only from batch 30 on."""
    state: dict[str, SensorState] = {}
    parts = []
    for k in np.unique(batch_of):
        rows = np.nonzero(batch_of == k)[0]
        part = table.take(pa.array(rows))
        if k < 30:  # reading b starts half-way through
            part = part.drop_columns(["readings.b"])
        batch = part.combine_chunks().to_batches()[0]
        out, new, _ = sensor_features(batch, state, config)
        state.update(new)
        parts.append(out.to_pandas())
    return pd.concat(parts, ignore_index=True).set_index("event_id")
