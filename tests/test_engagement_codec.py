"""The engagement codec: every good event decoded, every bad one a reason, never an exception."""

from __future__ import annotations

import math

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas.codec import MAX_TIME, Rejected, write_ipc
from schemas.engagement_codec import (
    ENGAGEMENT_BASE,
    KINDS,
    EngagementBatchBuilder,
    decode_engagement_json,
    engagement_batch,
    validate_engagement_table,
)
from schemas.events import ARROW, JSON, EngagementEvent, json_schema
from tests.fakes import FakeRecord

ARROW_H = [("content-type", ARROW.encode())]
JSON_H = [("content-type", JSON.encode()), ("schema", b"engagement-event.v1")]
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_time": 1000, "kind": "click"}
REQUIRED = ("event_id", "user_id", "item_id", "event_time", "kind")


def table(**overrides: object) -> pa.Table:
    """Three good rows of an Arrow engagement batch, with columns replaced or added."""
    cols: dict[str, object] = {"event_id": ["a", "b", "c"], "user_id": ["u1", "u2", "u1"],
                               "item_id": ["i1", "i2", "i3"], "event_time": [1, 2, 3],
                               "kind": ["click", "rating", "purchase"]}
    cols.update(overrides)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def test_json_event_decodes_with_defaults_and_all_fields() -> None:
    assert decode_engagement_json(orjson.dumps(GOOD)) == EngagementEvent(
        "e1", "u1", "i1", 1000, "click", 1.0, None, {})
    full = {**GOOD, "kind": "rating", "value": 4, "category": "Drama",
            "context": {"device": "tv", "pos": 2, "promo": False, "score": 0.5}}
    ev = decode_engagement_json(orjson.dumps(full))
    assert ev == EngagementEvent("e1", "u1", "i1", 1000, "rating", 4.0, "Drama",
                                 {"device": "tv", "pos": 2, "promo": False, "score": 0.5})
    assert isinstance(ev, EngagementEvent) and type(ev.value) is float
    # the slow path (a float event_time) reaches the same event
    assert decode_engagement_json(orjson.dumps({**full, "event_time": 1000.0})) == ev
    assert EngagementEvent.from_dict(orjson.loads(ev.to_json())) == ev


@pytest.mark.parametrize("example", json_schema("engagement-event.v1")["examples"])
def test_schema_examples_decode_and_survive_to_json(example: dict[str, object]) -> None:
    ev = decode_engagement_json(orjson.dumps(example))
    assert isinstance(ev, EngagementEvent)
    assert ev == EngagementEvent.from_dict(example) == decode_engagement_json(ev.to_json())
    Draft202012Validator(json_schema("engagement-event.v1")).validate(orjson.loads(ev.to_json()))


CASES: list[tuple[object, str, str]] = [
    (b"", "empty-value", "message value is empty or null"),
    (None, "empty-value", "message value is empty or null"),
    (b"nope", "not-json", ""),
    (b'{"event_id":"e","user_id":"u","item_id":"i","event_time":1,"kind":"click","value":NaN}',
     "not-json", ""),
    (b"[1]", "not-an-object", "top level is list"),
    (orjson.dumps({**GOOD, "event_id": None}), "missing-field", "event_id"),
    (orjson.dumps({**GOOD, "user_id": 7}), "wrong-type", "user_id: expected string, got int"),
    (orjson.dumps({**GOOD, "item_id": ""}), "out-of-range", "item_id: length 0 not in 1..256"),
    (orjson.dumps({**GOOD, "item_id": "x" * 257}), "out-of-range",
     "item_id: length 257 not in 1..256"),
    (orjson.dumps({**GOOD, "event_time": 1.5}), "wrong-type",
     "event_time: expected integer ms, got float"),
    (orjson.dumps({**GOOD, "event_time": True}), "wrong-type",
     "event_time: expected integer ms, got bool"),
    (orjson.dumps({**GOOD, "event_time": "5"}), "wrong-type",
     "event_time: expected integer ms, got str"),
    (orjson.dumps({**GOOD, "event_time": -1}), "out-of-range",
     f"event_time -1 not in 0..{MAX_TIME}"),
    (orjson.dumps({**GOOD, "event_time": MAX_TIME + 1}), "out-of-range",
     f"event_time {MAX_TIME + 1} not in 0..{MAX_TIME}"),
    (orjson.dumps({**GOOD, "kind": 1}), "wrong-type", "kind: expected string, got int"),
    (orjson.dumps({**GOOD, "kind": "like"}), "bad-value",
     "kind: 'like' not in impression|click|rating|purchase"),
    (orjson.dumps({**GOOD, "kind": "Click"}), "bad-value",
     "kind: 'Click' not in impression|click|rating|purchase"),
    (orjson.dumps({**GOOD, "value": True}), "wrong-type", "value: expected number, got bool"),
    (orjson.dumps({**GOOD, "value": None}), "wrong-type", "value: expected number, got NoneType"),
    (orjson.dumps({**GOOD, "value": "3"}), "wrong-type", "value: expected number, got str"),
    (orjson.dumps({**GOOD, "category": None}), "wrong-type",
     "category: expected string, got NoneType"),
    (orjson.dumps({**GOOD, "category": ["a"]}), "wrong-type",
     "category: expected string, got list"),
    (orjson.dumps({**GOOD, "category": ""}), "out-of-range",
     "category: length 0 not in 1..256"),
    (orjson.dumps({**GOOD, "category": "c" * 257}), "out-of-range",
     "category: length 257 not in 1..256"),
    (orjson.dumps({**GOOD, "context": [1]}), "wrong-type", "context: expected object, got list"),
    (orjson.dumps({**GOOD, "context": {"a": 1, "b": None}}), "wrong-type",
     "context.b: expected string, number or boolean, got NoneType"),
    (orjson.dumps({**GOOD, "context": {"a": {"nested": 1}}}), "wrong-type",
     "context.a: expected string, number or boolean, got dict"),
    (orjson.dumps({**GOOD, "extra": 1, "more": 2}), "unknown-field", "extra, more"),
    *[(orjson.dumps({k: v for k, v in GOOD.items() if k != name}), "missing-field", name)
      for name in REQUIRED],
]


@pytest.mark.parametrize(("raw", "reason", "detail"), CASES,
                         ids=[f"{r}-{i}" for i, (_, r, _) in enumerate(CASES)])
def test_each_bad_json_gets_its_reason(raw: bytes | None, reason: str, detail: str) -> None:
    got = decode_engagement_json(raw)
    assert isinstance(got, Rejected) and got.reason == reason and got.row is None, got
    if detail:
        assert got.detail == detail
    # the builder's batch path finds the same reason, and keeps nothing
    b = EngagementBatchBuilder()
    assert b.add_records([FakeRecord(raw, JSON_H, 0)], 1) == [(0, got)]
    assert len(b) == 0 and b.build().num_rows == 0


def test_headers_pick_the_decoder() -> None:
    b = EngagementBatchBuilder()
    sensor = b.add(orjson.dumps(GOOD), [("schema", b"sensor-event.v1")], 0, None, 0)
    later = b.add(orjson.dumps(GOOD), [("schema", b"engagement-event.v2")], 1, None, 0)
    ctype = b.add(orjson.dumps(GOOD), [("content-type", b"text/csv")], 2, None, 0)
    assert isinstance(sensor, Rejected) and sensor.reason == "unknown-schema"
    assert isinstance(later, Rejected) and later.detail == "engagement-event.v2"
    assert isinstance(ctype, Rejected) and ctype.reason == "unknown-content-type"
    assert b.add(orjson.dumps(GOOD), [], 3, 55, 60) is None  # no headers: JSON, current schema
    assert b.add(orjson.dumps({**GOOD, "category": "c"}), JSON_H, 4, None, 61) is None
    assert len(b) == 2
    out = b.build()
    assert out.schema == ENGAGEMENT_BASE
    assert out.to_pylist() == [
        {**GOOD, "category": None, "value": 1.0, "source_time": 55, "source_offset": 3,
         "ingest_time": 60},
        {**GOOD, "category": "c", "value": 1.0, "source_time": None, "source_offset": 4,
         "ingest_time": 61}]
    assert len(b) == 0 and b.build().num_rows == 0  # build empties the builder


def test_empty_build_has_the_schema() -> None:
    out = EngagementBatchBuilder().build()
    assert out.num_rows == 0 and out.schema == ENGAGEMENT_BASE


def test_arrow_round_trip_of_a_json_built_batch() -> None:
    """A batch built from JSON, sent as an Arrow message, comes back row for row."""
    b = EngagementBatchBuilder()
    docs = [{**GOOD, "event_id": f"e{i}", "kind": KINDS[i % 4], "value": i / 2,
             **({"category": f"c{i % 3}"} if i % 2 else {})} for i in range(10)]
    assert b.add_records([FakeRecord(orjson.dumps(d), JSON_H, i, 100 + i)
                          for i, d in enumerate(docs)], 7) == []
    sent = b.build()
    again = EngagementBatchBuilder()
    assert again.add(write_ipc(sent), ARROW_H, 42, 500, 8) is None
    back = again.build()
    assert back.schema == ENGAGEMENT_BASE
    meta = ["source_time", "source_offset", "ingest_time"]
    assert back.drop_columns(meta).equals(sent.drop_columns(meta))
    assert back.column("source_offset").to_pylist() == [42] * 10  # ingest overwrites
    # featurize's check keeps the metadata ingest wrote
    checked = engagement_batch(write_ipc(sent), 42, 500, 8)
    assert not isinstance(checked, Rejected)
    assert checked[0].equals(sent) and checked[1] == []


def test_arrow_batch_keeps_good_rows_and_names_each_bad_one_once() -> None:
    t = pa.table({
        "event_id": ["ok1", None, "", "r3", "r4", "r5", "r6", "r7", "ok8", "r9"],
        "user_id": ["u"] * 9 + [None],
        "item_id": ["i"] * 10,
        "event_time": [1, 2, 3, -1, None, 6, 7, 8, 9, 10],
        "kind": ["click", "click", "click", "click", "click", "like", None, "rating",
                 "purchase", "click"],
        "value": [None, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, math.inf, 2.5, 1.0],
        "category": ["c", None, None, None, None, None, None, None, None, ""],
        "context": ["dropped"] * 10,  # columns outside the schema are not carried
    })
    b = EngagementBatchBuilder()
    bad = b.add(write_ipc(t), ARROW_H, 9, 77, 0)
    assert isinstance(bad, list)
    assert [(r.reason, r.detail.split(":")[0].split(" ")[0], r.row) for r in bad] == [
        ("missing-field", "event_id", 1), ("out-of-range", "event_id", 2),
        ("out-of-range", "event_time", 3), ("missing-field", "event_time", 4),
        ("bad-value", "kind", 5), ("missing-field", "kind", 6), ("non-finite", "value", 7),
        ("missing-field", "user_id", 9)]  # row 9's bad category is not named twice
    out = b.build()
    assert out.schema == ENGAGEMENT_BASE
    assert out.to_pylist() == [
        {"event_id": "ok1", "user_id": "u", "item_id": "i", "category": "c", "event_time": 1,
         "kind": "click", "value": 1.0, "source_time": 77, "source_offset": 9, "ingest_time": 0},
        {"event_id": "ok8", "user_id": "u", "item_id": "i", "category": None, "event_time": 9,
         "kind": "purchase", "value": 2.5, "source_time": 77, "source_offset": 9,
         "ingest_time": 0}]


def test_arrow_accepts_the_usual_encodings() -> None:
    """Dictionary-encoded and large strings, timestamps, small ints, an all-null category."""
    t = pa.table({
        "event_id": pa.array(["a", "b"], pa.large_string()),
        "user_id": pa.array(["u", "v"]).dictionary_encode(),
        "item_id": ["i", "j"],
        "event_time": pa.array([1_000, 2_000], pa.timestamp("ms", tz="UTC")),
        "kind": pa.array(["click", "rating"]).dictionary_encode(),
        "value": pa.array([1, 5], pa.int8()),
        "category": pa.nulls(2),
        "source_offset": pa.array([3, 4], pa.int32()),
    })
    checked = engagement_batch(write_ipc(t), 10, 20, 30)
    assert not isinstance(checked, Rejected)
    batch, bad = checked
    assert bad == [] and batch.schema == ENGAGEMENT_BASE
    assert batch.to_pylist()[1] == {
        "event_id": "b", "user_id": "v", "item_id": "j", "category": None, "event_time": 2000,
        "kind": "rating", "value": 5.0, "source_time": 20, "source_offset": 4, "ingest_time": 30}


@pytest.mark.parametrize(("value", "reason", "detail"), [
    (b"", "empty-value", "message value is empty or null"),
    (write_ipc(table())[:40], "bad-arrow", ""),
    (b"not arrow at all", "bad-arrow", ""),
    (write_ipc(table(user_id=None)), "missing-field", "user_id"),
    (write_ipc(table(kind=None)), "missing-field", "kind"),
    (write_ipc(table(event_id=[1, 2, 3])), "wrong-type", "event_id: expected string, got int64"),
    (write_ipc(table(value=["1", "2", "3"])), "wrong-type", "value: expected number, got string"),
    (write_ipc(table(value=[True, False, True])), "wrong-type", "value: expected number, got bool"),
    (write_ipc(table(event_time=[1.5, 2.0, 3.0])), "wrong-type", ""),
    (write_ipc(table(event_time=["1", "2", "3"])), "wrong-type",
     "event_time: expected integer ms or timestamp, got string"),
    (write_ipc(table(category=[1, 2, 3])), "wrong-type", "category: expected string, got int64"),
    (write_ipc(table(source_time=[1.0, 2.0, 3.0])), "wrong-type",
     "source_time: expected integer ms, got double"),
    (write_ipc(pa.Table.from_arrays([pa.array(["a"])] * 6, names=[
        *REQUIRED, "event_id"])), "bad-arrow", "duplicate columns: event_id"),
])
def test_unreadable_or_mistyped_arrow_is_rejected_whole(value: bytes, reason: str,
                                                        detail: str) -> None:
    b = EngagementBatchBuilder()
    got = b.add(value, ARROW_H, 0, None, 0)
    assert isinstance(got, Rejected) and got.reason == reason and got.row is None, got
    if detail:
        assert got.detail == detail
    assert engagement_batch(value, 0, None, 0) == got
    assert len(b) == 0


def test_validate_table_on_an_empty_batch() -> None:
    checked = validate_engagement_table(table().slice(0, 0))
    assert not isinstance(checked, Rejected)
    assert checked[0].num_rows == 0 and checked[1] == []
    batch = engagement_batch(write_ipc(table().slice(0, 0)), 1, None, 2)
    assert not isinstance(batch, Rejected) and batch[0].schema == ENGAGEMENT_BASE


def test_mixed_messages_in_one_poll_keep_offset_order() -> None:
    """JSON after an Arrow message in the same `add_records` call is not lost."""
    j = [FakeRecord(orjson.dumps({**GOOD, "event_id": f"j{i}"}), JSON_H, i) for i in range(4)]
    records = [j[0], j[1], FakeRecord(write_ipc(table()), ARROW_H, 10), j[2],
               FakeRecord(b"{", JSON_H, 11), j[3]]
    b = EngagementBatchBuilder()
    rejected = b.add_records(records, 0)
    assert [(i, r.reason) for i, r in rejected] == [(4, "not-json")]
    assert len(b) == 7
    out = b.build()
    assert out.column("event_id").to_pylist() == ["j0", "j1", "a", "b", "c", "j2", "j3"]
    assert out.column("source_offset").to_pylist() == [0, 1, 10, 10, 10, 2, 3]


def test_add_records_matches_add_one_by_one() -> None:
    """The inlined hot loop accepts and rejects exactly what `add` does, in order."""
    values = [orjson.dumps({**GOOD, "event_id": f"e{i}", "value": i, "category": "c"})
              for i in range(8)]
    values[2] = b"{broken"
    values[4] = orjson.dumps({**GOOD, "kind": "like"})
    values[5] = orjson.dumps({**GOOD, "context": {"a": 1}})  # valid, fast path
    values[6] = orjson.dumps({**GOOD, "event_time": 5.0})  # valid, slow path
    records = [FakeRecord(v, JSON_H, i, 100 + i) for i, v in enumerate(values)]
    records.append(FakeRecord(orjson.dumps(GOOD), [("schema", b"engagement-event.v7")], 8))
    t = table(kind=["click", "nope", "rating"])
    records.append(FakeRecord(write_ipc(t), ARROW_H, 9))
    records.append(FakeRecord(values[0], JSON_H, 10))
    many = EngagementBatchBuilder()
    rejected = many.add_records(records, 5)
    one = EngagementBatchBuilder()
    singles = [(i, one.add(r.value, r.headers, r.offset, r.timestamp, 5))
               for i, r in enumerate(records)]
    expected = [(i, r) for i, rs in singles if rs is not None
                for r in (rs if isinstance(rs, list) else [rs])]
    assert rejected == expected
    assert [(i, r.reason, r.row) for i, r in rejected] == [
        (2, "not-json", None), (4, "bad-value", None), (8, "unknown-schema", None),
        (9, "bad-value", 1)]
    assert len(many) == len(one) == 9
    assert many.build().equals(one.build())


# Valid documents, the same with one field replaced, removed or added, and anything else.
scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4))
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids,
                                                                 max_size=3),
    max_leaves=8)
good_ids = st.text(min_size=1, max_size=3) | st.sampled_from(["x" * 256])
good_docs = st.fixed_dictionaries(
    {"event_id": good_ids, "user_id": good_ids, "item_id": good_ids,
     "event_time": st.integers(0, MAX_TIME) | st.sampled_from([0.0, 5.0, float(MAX_TIME)]),
     "kind": st.sampled_from(KINDS)},
    optional={
        "value": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**63, 2**64 - 1),
        "category": good_ids,
        "context": st.dictionaries(st.text(max_size=4), st.text(max_size=2) | st.booleans()
                                   | st.integers(-2**63, 2**64 - 1) | st.floats(
                                       allow_nan=False, allow_infinity=False), max_size=4),
    })
edges = st.sampled_from(["", "x" * 257, -1, MAX_TIME + 1, 5.5, 1e300, True, None, "Click",
                         "view", {}, [], {"a": None}, {"a": [1]}, {"a": {}}])
any_values = scalars | json_values | st.dictionaries(st.text(max_size=4), json_values,
                                                     max_size=3)
replaced = st.builds(lambda d, key, v: {**d, key: v}, good_docs,
                     st.sampled_from([*REQUIRED, "value", "category", "context", "extra"]),
                     edges | any_values)
dropped = st.builds(lambda d, gone: {k: v for k, v in d.items() if k != gone},
                    good_docs, st.sampled_from(REQUIRED))
documents = good_docs | replaced | dropped | json_values


@settings(max_examples=1500, deadline=None)
@given(documents)
def test_codec_agrees_with_the_json_schema(doc: object) -> None:
    """The hand-written validator accepts exactly what engagement-event.v1.json accepts."""
    validator = Draft202012Validator(json_schema("engagement-event.v1"))
    got = decode_engagement_json(orjson.dumps(doc))
    assert isinstance(got, EngagementEvent) == validator.is_valid(doc), (doc, got)
    if isinstance(got, EngagementEvent):
        assert isinstance(doc, dict)
        assert got.category == doc.get("category") and got.value == float(doc.get("value", 1))
