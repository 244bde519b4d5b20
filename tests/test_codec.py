"""The codec: every good event decoded, every bad one a reason, never an exception."""

from __future__ import annotations

import math

import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas.codec import (
    Rejected,
    SensorBatchBuilder,
    decode_sensor_json,
    read_ipc,
    validate_sensor_table,
    write_ipc,
)
from schemas.events import ARROW, SensorEvent, headers, json_schema
from tests.fakes import FakeRecord

ARROW_H = [("content-type", ARROW.encode())]
GOOD = {"event_id": "e1", "sensor_id": "s1", "event_time": 1000, "readings": {"t": 1.5}}


def test_json_event_round_trips() -> None:
    ev = decode_sensor_json(orjson.dumps(GOOD))
    assert ev == SensorEvent("e1", "s1", 1000, {"t": 1.5})


def test_each_bad_json_gets_its_reason() -> None:
    cases = {
        b"": "empty-value",
        b"nope": "not-json",
        b"3": "not-an-object",
        orjson.dumps({**GOOD, "event_id": 7}): "wrong-type",
        orjson.dumps({**GOOD, "event_id": ""}): "out-of-range",
        orjson.dumps({**GOOD, "event_time": 1.5}): "wrong-type",
        orjson.dumps({**GOOD, "event_time": -1}): "out-of-range",
        orjson.dumps({**GOOD, "readings": {}}): "out-of-range",
        orjson.dumps({**GOOD, "readings": [1]}): "wrong-type",
        orjson.dumps({**GOOD, "readings": {"t": True}}): "wrong-type",
        orjson.dumps({**GOOD, "readings": {"bad name": 1}}): "bad-name",
        orjson.dumps({**GOOD, "extra": 1}): "unknown-field",
        orjson.dumps({k: v for k, v in GOOD.items() if k != "readings"}): "missing-field",
    }
    for raw, reason in cases.items():
        got = decode_sensor_json(raw)
        assert isinstance(got, Rejected) and got.reason == reason, (raw, got)


def test_headers_pick_the_decoder() -> None:
    b = SensorBatchBuilder()
    unknown = b.add(orjson.dumps(GOOD), [("schema", b"sensor-event.v2")], 0, None, 0)
    ctype = b.add(orjson.dumps(GOOD), [("content-type", b"text/csv")], 1, None, 0)
    assert isinstance(unknown, Rejected) and unknown.reason == "unknown-schema"
    assert isinstance(ctype, Rejected) and ctype.reason == "unknown-content-type"
    assert b.add(orjson.dumps(GOOD), [], 2, 55, 60) is None  # no headers: JSON, current schema
    batch = b.build()
    assert batch.to_pylist() == [{"event_id": "e1", "sensor_id": "s1", "event_time": 1000,
                                  "source_time": 55, "source_offset": 2, "ingest_time": 60,
                                  "readings.t": 1.5}]


def test_arrow_batch_keeps_good_rows_and_names_bad_ones() -> None:
    t = pa.table({"event_id": ["a", "b", None, "d"], "sensor_id": ["s"] * 4,
                  "event_time": pa.array([1, 2, 3, 4], pa.int64()),
                  "readings.x": [1.0, math.inf, 2.0, None], "readings.y": [1.0, 1.0, 1.0, None]})
    b = SensorBatchBuilder()
    bad = b.add(write_ipc(t), ARROW_H, 9, None, 0)
    assert isinstance(bad, list)
    assert [(r.reason, r.row) for r in bad] == [("non-finite", 1), ("invalid-row", 2),
                                                 ("invalid-row", 3)]
    out = b.build()
    assert out.column("event_id").to_pylist() == ["a"]
    assert out.column("source_offset").to_pylist() == [9]


def test_truncated_and_wrong_arrow_are_rejected_whole() -> None:
    t = pa.table({"event_id": ["a"], "sensor_id": ["s"], "event_time": [1], "readings.x": [1.0]})
    b = SensorBatchBuilder()
    r1 = b.add(write_ipc(t)[:30], ARROW_H, 0, None, 0)
    r2 = b.add(write_ipc(t.drop_columns(["sensor_id"])), ARROW_H, 1, None, 0)
    r3 = b.add(write_ipc(pa.table({"event_id": ["a"], "sensor_id": ["s"], "event_time": [1]})),
               ARROW_H, 2, None, 0)
    assert [getattr(r, "reason", None) for r in (r1, r2, r3)] == [
        "bad-arrow", "missing-field", "missing-field"]
    assert len(b) == 0


def test_mixed_messages_keep_offset_order() -> None:
    b = SensorBatchBuilder()
    b.add(orjson.dumps({**GOOD, "event_id": "j1"}), [], 0, None, 0)
    t = pa.table({"event_id": ["a1"], "sensor_id": ["s1"], "event_time": [5],
                  "readings.u": [2.0]})
    b.add(write_ipc(t), ARROW_H, 1, None, 0)
    b.add(orjson.dumps({**GOOD, "event_id": "j2"}), [], 2, None, 0)
    out = b.build()
    assert out.column("event_id").to_pylist() == ["j1", "a1", "j2"]
    assert out.column("readings.u").to_pylist() == [None, 2.0, None]
    assert read_ipc(write_ipc(out)).num_rows == 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 2**50) | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids,
                                                                 max_size=3),
    max_leaves=8)
events = st.fixed_dictionaries(
    {"event_id": st.text(min_size=1, max_size=3) | st.integers(-2**63, 2**63 - 1),
     "sensor_id": st.text(max_size=3),
     "event_time": st.integers(-5, 2**45) | st.floats(-5, 2**45) | st.booleans(),
     "readings": st.dictionaries(st.from_regex(r"[a-z_]{1,3}", fullmatch=True) | st.text(
         max_size=3), st.floats(allow_nan=False, allow_infinity=False)
         | st.integers(-2**63, 2**63 - 1) | st.booleans() | st.text(max_size=2), max_size=3)},
    optional={"extra": json_values})


@settings(max_examples=1000, deadline=None)
@given(events | json_values)
def test_codec_agrees_with_the_json_schema(doc: object) -> None:
    """The hand-written validator accepts exactly what sensor-event.v1.json accepts."""
    validator = Draft202012Validator(json_schema("sensor-event.v1"))
    got = decode_sensor_json(orjson.dumps(doc))
    assert isinstance(got, SensorEvent) == validator.is_valid(doc), (doc, got)


def test_add_records_matches_add_one_by_one() -> None:
    """The inlined hot loop accepts and rejects exactly what `add` does, in order."""
    h = [("content-type", b"application/json"), ("schema", b"sensor-event.v1")]
    values = [orjson.dumps({**GOOD, "event_id": f"e{i}", "readings": {"t": i, "u": 0.5}})
              for i in range(6)]
    values[2] = b"{broken"
    values[4] = orjson.dumps({**GOOD, "readings": {"t": True}})
    records = [FakeRecord(v, h, i, 100 + i) for i, v in enumerate(values)]
    records.append(FakeRecord(orjson.dumps(GOOD), [("schema", b"sensor-event.v7")], 6))
    many = SensorBatchBuilder()
    rejected = many.add_records(records, 5)
    one = SensorBatchBuilder()
    singles = [(i, one.add(r.value, r.headers, r.offset, r.timestamp, 5))
               for i, r in enumerate(records)]
    assert rejected == [(i, r) for i, r in singles if r is not None]
    assert [i for i, _ in rejected] == [2, 4, 6]
    assert many.build().equals(one.build())


def test_json_after_an_arrow_message_in_one_poll_is_kept() -> None:
    arrow = write_ipc(pa.table({"event_id": ["a1"], "sensor_id": ["s"], "event_time": [1],
                                "readings.t": [1.0]}))
    records = [FakeRecord(orjson.dumps({**GOOD, "event_id": f"j{i}"}), [], i) for i in range(2)]
    records.append(FakeRecord(arrow, headers(ARROW, "sensor-event.v1"), 2))
    records.append(FakeRecord(orjson.dumps({**GOOD, "event_id": "j3"}), [], 3))
    b = SensorBatchBuilder()
    assert b.add_records(records, 9) == []
    assert b.build().column("event_id").to_pylist() == ["j0", "j1", "a1", "j3"]


def test_an_arrow_batch_with_a_repeated_column_is_rejected_not_raised() -> None:
    t = pa.Table.from_arrays([pa.array(["a"]), pa.array(["s"]), pa.array([1]), pa.array([1.0]),
                              pa.array([2.0])],
                             names=["event_id", "sensor_id", "event_time", "readings.t",
                                    "readings.t"])
    assert validate_sensor_table(t) == Rejected("bad-arrow", "duplicate columns: readings.t")


def test_an_arrow_batch_cut_short_at_a_message_boundary_is_rejected() -> None:
    """Cut just after its schema, a stream reads as a valid one of no rows: without the
    end-of-stream check the batch vanished, neither decoded nor dead-lettered (found by
    tests/test_fuzz.py)."""
    t = pa.table({"event_id": ["a"], "sensor_id": ["s"], "event_time": [1], "readings.x": [1.0]})
    whole = write_ipc(t)
    after_schema = whole[:len(write_ipc(t.slice(0, 0))) - 8]
    assert read_ipc(after_schema).num_rows == 0  # what a reader makes of it
    for cut in (after_schema, whole[:-8], whole[:-4]):
        b = SensorBatchBuilder()
        assert b.add_records([FakeRecord(cut, ARROW_H, 0)], 0) == [
            (0, Rejected("bad-arrow", "no end-of-stream marker: the stream is cut short"))]
        assert len(b) == 0


def test_an_integer_reading_past_2_to_the_53_is_kept_beside_events_with_other_readings() -> None:
    """JSON numbers are valid readings at any size; one that a double cannot hold exactly,
    in a poll whose events have different readings, made `build` raise and stopped ingest,
    the whole worker, and every restart after it (found by tests/test_fuzz.py)."""
    b = SensorBatchBuilder()
    records = [FakeRecord(orjson.dumps({**GOOD, "event_id": "a", "readings": {"t": 2**64 - 1}}),
                          [], 0),
               FakeRecord(orjson.dumps({**GOOD, "event_id": "b", "readings": {"u": 1}}), [], 1)]
    assert b.add_records(records, 0) == []
    batch = b.build()
    assert batch.column("readings.t").to_pylist() == [float(2**64 - 1), None]
    assert batch.column("readings.u").to_pylist() == [None, 1.0]
