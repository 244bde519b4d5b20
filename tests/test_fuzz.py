"""Fuzz: thousands of malformed messages of every kind, mixed with good events, through one
worker on the real broker.

Hypothesis generates the bad messages for `sensor-events`, `engagement-events` and
`labels`: bytes that are not JSON, wrong types, missing and unknown fields, huge values,
deep nesting, wrong headers, truncated and invalid Arrow batches. Good shuttle events go
between them, as JSON and in Arrow batches beside bad rows, up to the largest message the
broker accepts. Every bad message must come back from `dead-letters` with its source
coordinates and a reason, every good event must be predicted once, and the worker must
get through it all without a restart or an error in its log. A message one byte over the
broker's limit is refused to its producer with a clear error.

`test_codec_rejects_every_generated_bad_message` runs the same strategies through the
codecs alone, where Hypothesis can shrink a failure to its smallest example.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import re
import secrets
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson
import pyarrow as pa
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from models.datasets import shuttle
from schemas.codec import MAX_ID, MAX_TIME, SensorBatchBuilder, read_ipc, write_ipc
from schemas.engagement_codec import KINDS, EngagementBatchBuilder
from schemas.events import ARROW, JSON
from schemas.label_codec import LabelBatchBuilder
from streams.produce import sensor_json
from streams.settings import Settings
from tests.conftest import Worker
from tests.fakes import FakeRecord
from tests.test_pipeline import behind, caught_up, metric, read_all
from tests.waiting import wait_for

GOOD = 3000  # good JSON shuttle events
BAD = 3000  # generated bad messages
BROKER_MAX = 8 * 1024 * 1024  # message.max.bytes of the test broker (streams/broker.py)
RAW_KEPT = Settings().dead_letter_max_raw
T0 = 1_500_000_000_000  # event times of the fuzz events (2017)

#: every reason README.md's "Messages" section documents
REASONS = frozenset({
    "empty-value", "not-json", "not-an-object", "missing-field", "wrong-type", "out-of-range",
    "late", "future", "non-finite", "bad-value", "bad-name", "unknown-field", "unknown-schema",
    "unknown-content-type", "bad-arrow", "invalid-row", "missing-feature", "decode-error",
    "featurize-error"})

SCHEMA = {"sensor-events": b"sensor-event.v1", "engagement-events": b"engagement-event.v1",
          "labels": b"label.v1"}
#: the fields of each topic's documents and their kinds (for the wrong values to draw)
FIELDS = {
    "sensor-events": {"event_id": "id", "sensor_id": "id", "event_time": "time",
                      "readings": "readings"},
    "engagement-events": {"event_id": "id", "user_id": "id", "item_id": "id",
                          "event_time": "time", "kind": "kind"},
    "labels": {"event_id": "id", "value": "number", "source": "source", "label_time": "time"},
}
OPTIONAL = {"sensor-events": set(), "engagement-events": {"value", "category", "context"},
            "labels": {"annotator", "model"}}
READINGS = [f"readings.f{i}" for i in range(1, 10)]
SHUTTLE_ROW = {"f1": 50.0, "f2": 21.0, "f3": 77.0, "f4": 0.0, "f5": 28.0, "f6": 0.0,
               "f7": 27.0, "f8": 48.0, "f9": 22.0}
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # an Arrow IPC stream's end-of-stream marker
RAW = "\x00raw\x00"  # stands for raw JSON text spliced into a document (bignums, nesting)


@dataclass
class Bad:
    """One message to send and what the worker must make of it."""

    topic: str  # before the prefix
    value: bytes | None
    headers: list[tuple[str, bytes]]
    kind: str  # what was broken, for failure messages
    key: bytes = b"fuzz"
    #: rows dead-lettered one by one (an Arrow batch); None: the message dead-lettered whole
    rows: tuple[int, ...] | None = None
    good: tuple[str, ...] = ()  # event ids of the good rows of an Arrow batch
    #: an event ingest passes and featurize refuses (a reading beyond any physical range,
    #: an event time far ahead): its event id
    featurize: str | None = None


Make = Callable[[str], Bad]  # a bad message, given an id unique in the run


def valid_doc(topic: str, uid: str) -> dict[str, Any]:
    if topic == "sensor-events":
        return {"event_id": uid, "sensor_id": "fuzz", "event_time": T0, "readings": {"f1": 1.0}}
    if topic == "engagement-events":
        return {"event_id": uid, "user_id": "fuzz", "item_id": "i", "event_time": T0,
                "kind": "click"}
    return {"event_id": uid, "value": 1, "source": "outcome", "label_time": T0}


def fits(kind: str, v: object) -> bool:
    """Whether `v` is a valid value of a field of `kind` (then it cannot make a bad one)."""
    if kind == "id":
        return isinstance(v, str) and 0 < len(v) <= MAX_ID
    if kind == "time":
        return (type(v) is int or type(v) is float and v.is_integer()) and 0 <= v <= MAX_TIME
    if kind == "number":
        return type(v) in (int, float)
    if kind == "kind":
        return v in KINDS
    if kind == "source":
        return v in ("outcome", "human")
    assert kind == "readings"
    return (isinstance(v, dict) and 0 < len(v) <= 64
            and all(type(x) in (int, float) and abs(x) <= 1e12 for x in v.values())
            and all(re.fullmatch(r"[A-Za-z0-9_]{1,64}", k) for k in v))


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=20))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
#: header values that are not what the header may say (any bytes, near misses)
odd_bytes = st.one_of(st.binary(max_size=40), st.sampled_from(
    [b"", b"application/JSON", b"application/json; charset=utf-8", b"text/plain",
     b"application/vnd.apache.arrow.file", b"sensor-event.v2", b"engagement-event.v1",
     b"label.v1", b"\xff\xfe", b"sensor-event.v1\x00"]))


def nested(depth: int, dicts: bool) -> str:
    """JSON text nested `depth` deep whose innermost value is `true` (never a valid field)."""
    return '{"a":' * depth + "true" + "}" * depth if dicts else "[" * depth + "true" + "]" * depth


def render(doc: object, raw: str | None = None) -> bytes:
    text = orjson.dumps(doc)
    if raw is not None:
        text = text.replace(orjson.dumps(RAW), raw.encode())
    return text


# Strategies are built once, not per draw: building one costs more than drawing from it.

other_headers = st.lists(st.tuples(st.sampled_from(["trace-id", "Content-Type", "Schema", "x"]),
                                   st.binary(max_size=20)), max_size=2)


@cache
def valid_json_headers(topic: str) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    """Headers that read as JSON of the topic's schema: present, absent, or with others."""
    ct, schema = ("content-type", JSON.encode()), ("schema", SCHEMA[topic])
    return st.tuples(other_headers, st.sampled_from(
        [[ct, schema], [schema, ct], [], [ct], [schema]])).map(lambda t: [*t[0], *t[1]])


@cache
def wrong_value(kind: str) -> st.SearchStrategy[object]:
    return json_values.filter(lambda v: not fits(kind, v))


@cache
def wrong_header(topic: str, name: str) -> st.SearchStrategy[bytes]:
    right = JSON.encode() if name == "content-type" else SCHEMA[topic]
    return odd_bytes.filter(lambda b: b != right)


@cache
def unknown_name(topic: str) -> st.SearchStrategy[str]:
    known = set(FIELDS[topic]) | OPTIONAL[topic]
    return st.text(min_size=1, max_size=20).filter(lambda k: k not in known)


@cache
def field_name(topic: str) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(FIELDS[topic]))


JSON_FAULTS = st.sampled_from(["bytes", "missing", "wrong-type", "unknown-field", "huge",
                               "nested", "not-an-object", "headers"])
junk_values = st.one_of(st.none(), st.binary(max_size=300), st.text(max_size=300).map(str.encode))
depths = st.integers(1, 2048)  # up to twice orjson's depth limit of 1024
not_objects = st.one_of(json_values.filter(lambda v: not isinstance(v, dict)),
                        depths.map(lambda n: RAW + nested(n, False)))


@st.composite
def bad_json(draw: st.DrawFn, topic: str) -> Make:
    """A JSON message for `topic` with one thing wrong with it."""
    fields = FIELDS[topic]
    how = draw(JSON_FAULTS)
    headers = draw(valid_json_headers(topic))
    raw: str | None = None
    edit: Callable[[dict[str, Any]], object]
    if how == "bytes":  # not JSON, or JSON but nothing like an event
        value = draw(junk_values)
        return lambda uid: Bad(topic, value, headers, "bytes")
    if how == "headers":  # a valid document, refused for its headers alone
        name = draw(st.sampled_from(["content-type", "schema"]))
        wrong = draw(wrong_header(topic, name))
        bad_headers = draw(st.sampled_from([[(name, wrong)], [*headers, (name, wrong)]]))
        return lambda uid: Bad(topic, render(valid_doc(topic, uid)), bad_headers,
                               f"headers {name}={wrong!r}")
    if how == "missing":
        name = draw(field_name(topic))

        def edit(d: dict[str, Any]) -> object:
            return {k: v for k, v in d.items() if k != name}
    elif how == "wrong-type":
        name = draw(field_name(topic))
        wrong = draw(wrong_value(fields[name]))

        def edit(d: dict[str, Any]) -> object:
            return d | {name: wrong}
    elif how == "unknown-field":
        name = draw(unknown_name(topic))
        extra = draw(json_values)

        def edit(d: dict[str, Any]) -> object:
            return d | {name: extra}
    elif how == "huge":
        name, big = draw(huge_values(topic))

        def edit(d: dict[str, Any]) -> object:
            return d | {name: big}
        if isinstance(big, str) and big.startswith(RAW):
            raw = big[len(RAW):]
            big = RAW
    elif how == "nested":  # up to twice orjson's depth limit of 1024
        name = draw(field_name(topic))
        raw = nested(draw(depths), draw(st.booleans()))

        def edit(d: dict[str, Any]) -> object:
            return d | {name: RAW}
    else:  # a JSON value that is not an object, or one nested deep
        top = draw(not_objects)
        if isinstance(top, str) and top.startswith(RAW):
            raw, top = top[len(RAW):], RAW

        def edit(d: dict[str, Any]) -> object:
            return top
    return lambda uid: Bad(topic, render(edit(valid_doc(topic, uid)), raw), headers,
                           f"json {how}")


@cache
def huge_values(topic: str) -> st.SearchStrategy[tuple[str, object]]:
    """A field and a value too large for it: long ids, times past year 3000 or before 1970,
    numbers past 64 bits or past double's range (raw text), too many readings."""
    ids = [k for k, kind in FIELDS[topic].items() if kind == "id"]
    if topic == "engagement-events":
        ids.append("category")
    time_field = "label_time" if topic == "labels" else "event_time"
    choices = [
        st.tuples(st.sampled_from(ids), st.integers(MAX_ID + 1, 100_000).map(lambda n: "x" * n)),
        st.tuples(st.just(time_field), st.one_of(st.integers(MAX_TIME + 1, 2**64 - 1),
                                                 st.integers(-(2**63), -1))),
        st.tuples(st.just(time_field), st.integers(20, 400).map(lambda n: RAW + "9" * n)),
    ]
    if topic == "sensor-events":
        choices += [
            st.tuples(st.just("readings"), st.integers(65, 1000).map(
                lambda n: {f"r{i}": 1.0 for i in range(n)})),
            st.tuples(st.just("readings"), st.integers(65, 5000).map(lambda n: {"r" * n: 1.0})),
            st.tuples(st.just("readings"), st.integers(309, 2000).map(
                lambda n: RAW + '{"f1":1' + "0" * n + "}")),  # past double: not-json
        ]
    return st.one_of(choices)


beyond_physical = st.one_of(st.floats(1e12, 1e308, exclude_min=True),
                            st.floats(-1e308, -1e12, exclude_max=True),
                            st.integers(10**12 + 1, 2**64 - 1))


@st.composite
def featurize_refused(draw: st.DrawFn) -> Make:
    """A sensor event valid to ingest that featurize refuses: a reading beyond any physical
    range (abs > 1e12), or an event time more than a day ahead of ingest."""
    big = draw(beyond_physical)
    ahead = draw(st.booleans())

    def make(uid: str) -> Bad:
        doc = valid_doc("sensor-events", uid)
        if ahead:
            doc["event_time"] = MAX_TIME
        else:
            doc["readings"] = {"f1": big}
        return Bad("sensor-events", render(doc), [("content-type", JSON.encode())],
                   "featurize", featurize=uid)
    return make


ROW_FAULTS = ["null-id", "null-sensor", "nan", "inf", "negative-time", "late-time",
              "null-time", "no-reading"]


def arrow_rows(uid: str, faults: list[str | None], sensor: str) -> pa.Table:
    """Rows of sensor events, row i broken as `faults[i]` says (None: a good row)."""
    cols: dict[str, list[Any]] = {"event_id": [], "sensor_id": [], "event_time": []}
    cols |= {r: [] for r in READINGS}
    for i, fault in enumerate(faults):
        cols["event_id"].append(None if fault == "null-id" else f"{uid}-{i}")
        cols["sensor_id"].append(None if fault == "null-sensor" else sensor)
        t = {"negative-time": -1, "late-time": MAX_TIME + 1, "null-time": None}.get(
            fault or "", T0 + int(uid.removeprefix("z")) * 1000 + i)
        cols["event_time"].append(t)
        for r in READINGS:
            x: float | None = SHUTTLE_ROW[r.removeprefix("readings.")]
            if fault == "no-reading":
                x = None
            elif fault in ("nan", "inf") and r == "readings.f3":
                x = math.nan if fault == "nan" else -math.inf
            cols[r].append(x)
    return pa.table({"event_id": pa.array(cols["event_id"], pa.string()),
                     "sensor_id": pa.array(cols["sensor_id"], pa.string()),
                     "event_time": pa.array(cols["event_time"], pa.int64()),
                     **{r: pa.array(cols[r], pa.float64()) for r in READINGS}})


Cut = float | str  # where to cut an Arrow stream: a fraction of it, or a named boundary
cuts = st.one_of(st.floats(0, 1, exclude_max=True), st.sampled_from(["schema", "eos", "half-eos"]))


def truncate(t: pa.Table, cut: Cut) -> bytes:
    """Arrow stream `t` cut short: at a fraction of its length, just after its schema
    message (a reader sees a valid stream of no rows), or in its end-of-stream marker."""
    value = write_ipc(t)
    if cut == "schema":
        return value[:len(write_ipc(t.slice(0, 0))) - len(EOS)]
    if cut in ("eos", "half-eos"):
        return value[:len(value) - (len(EOS) if cut == "eos" else len(EOS) // 2)]
    assert isinstance(cut, float)
    return value[:max(1, int(cut * len(value)))]


ARROW_HEADERS = {t: [("content-type", ARROW.encode()), ("schema", SCHEMA[t])]
                 for t in ("sensor-events", "engagement-events")}


row_faults = st.lists(st.one_of(st.none(), st.sampled_from(ROW_FAULTS)), min_size=1,
                      max_size=6).filter(any)
SENSOR_ARROW_FAULTS = st.sampled_from(["rows", "truncated", "garbage", "missing-column",
                                       "wrong-type", "json-body"])
SENSOR_COLUMNS = st.sampled_from(["event_id", "sensor_id", "event_time", "readings"])
SENSOR_WRONG_COLUMNS = st.sampled_from(["time-text", "reading-text", "reading-list"])
arrow_junk = st.binary(min_size=1, max_size=500)


@st.composite
def bad_sensor_arrow(draw: st.DrawFn) -> Make:
    """An Arrow batch of sensor events: unreadable, truncated, a column missing or of a
    wrong type, or good rows beside bad ones (each bad row dead-lettered by its number)."""
    faults = draw(row_faults)
    sensor = f"arrow-{draw(st.integers(0, 3))}"
    how = draw(SENSOR_ARROW_FAULTS)
    cut = draw(cuts)
    missing = draw(SENSOR_COLUMNS)
    junk = draw(arrow_junk)
    wrong = draw(SENSOR_WRONG_COLUMNS)
    headers = ARROW_HEADERS["sensor-events"]

    def make(uid: str) -> Bad:
        t = arrow_rows(uid, faults, sensor)
        if how == "rows":
            rows = tuple(i for i, f in enumerate(faults) if f)
            good = tuple(f"{uid}-{i}" for i, f in enumerate(faults) if not f)
            return Bad("sensor-events", write_ipc(t), headers, f"arrow rows {faults}",
                       sensor.encode(), rows, good)
        if how == "truncated":
            value = truncate(t, cut)
        elif how == "garbage":
            value = junk
        elif how == "json-body":
            value = render(valid_doc("sensor-events", uid))
        elif how == "missing-column":
            value = write_ipc(t.drop_columns(READINGS if missing == "readings" else [missing]))
        else:
            n = t.num_rows
            col = {"time-text": ("event_time", pa.array(["noon"] * n)),
                   "reading-text": ("readings.f1", pa.array(["hot"] * n)),
                   "reading-list": ("readings.f1", pa.array([[1.0]] * n))}[wrong]
            value = write_ipc(t.set_column(t.schema.get_field_index(col[0]), col[0], col[1]))
        return Bad("sensor-events", value, headers, f"arrow {how}", sensor.encode())
    return make


ENGAGEMENT_ARROW_FAULTS = st.sampled_from(["truncated", "missing-column", "wrong-type",
                                           "bad-kind"])
ENGAGEMENT_COLUMNS = st.sampled_from(["event_id", "user_id", "item_id", "event_time", "kind"])
bad_kinds = st.text(max_size=10).filter(lambda k: k not in KINDS)


@st.composite
def bad_engagement_arrow(draw: st.DrawFn) -> Make:
    """An Arrow batch of engagement events that cannot be read, or whose rows are all bad."""
    n = draw(st.integers(1, 5))
    how = draw(ENGAGEMENT_ARROW_FAULTS)
    cut = draw(cuts)
    missing = draw(ENGAGEMENT_COLUMNS)
    kind = draw(bad_kinds)
    headers = ARROW_HEADERS["engagement-events"]

    def make(uid: str) -> Bad:
        t = pa.table({"event_id": [f"{uid}-{i}" for i in range(n)], "user_id": ["fuzz"] * n,
                      "item_id": ["i"] * n, "event_time": pa.array([T0] * n, pa.int64()),
                      "kind": ["click"] * n})
        rows = None
        if how == "truncated":
            value = truncate(t, cut)
        elif how == "missing-column":
            value = write_ipc(t.drop_columns([missing]))
        elif how == "wrong-type":
            value = write_ipc(t.set_column(3, "event_time", pa.array(["noon"] * n)))
        else:
            value = write_ipc(t.set_column(4, "kind", pa.array([kind] * n)))
            rows = tuple(range(n))
        return Bad("engagement-events", value, headers, f"arrow {how}", rows=rows)
    return make


@cache
def bad_message() -> st.SearchStrategy[Make]:
    return st.one_of(bad_json("sensor-events"), bad_json("engagement-events"),
                     bad_json("labels"), bad_sensor_arrow(), bad_engagement_arrow(),
                     featurize_refused())


def generate(n: int, at: int) -> list[Bad]:
    """`n` bad messages drawn by Hypothesis from seed `at`, each with its own ids."""
    out: list[Bad] = []

    @seed(at)
    @hsettings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
               suppress_health_check=list(HealthCheck))
    @given(bad_message())
    def collect(make: Make) -> None:
        out.append(make(f"z{len(out)}"))

    collect()
    return out


BUILDERS: dict[str, Callable[[], Any]] = {
    "sensor-events": SensorBatchBuilder, "engagement-events": EngagementBatchBuilder,
    "labels": LabelBatchBuilder}


@hsettings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.data_too_large])
@given(bad_message())
def test_codec_rejects_every_generated_bad_message(make: Make) -> None:
    """Each bad message is refused by ingest's codec with a documented reason (or, for a
    featurize case, passed on), and never makes it raise."""
    bad = make("z1")
    builder = BUILDERS[bad.topic]()
    good = FakeRecord(render(valid_doc(bad.topic, "z0") | (
        {"readings": {"other": 2.0}} if bad.topic == "sensor-events" else {})), [], 0)
    rejected = builder.add_records([good, FakeRecord(bad.value, bad.headers, 1)], 0)
    assert all(i == 1 and r.reason in REASONS for i, r in rejected), (bad, rejected)
    if bad.featurize is not None:
        assert rejected == []
        kept = 1
    elif bad.rows is None:
        assert len(rejected) == 1 and rejected[0][1].row is None, (bad, rejected)
        kept = 0
    else:
        assert tuple(r.row for _, r in rejected) == bad.rows, (bad, rejected)
        kept = len(bad.good)
    assert len(builder) == 1 + kept
    assert builder.build().num_rows == 1 + kept  # the batch ingest sends is built


# -- the worker on the real broker ----------------------------------------------------------

def batch_bytes(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """The size the broker checks against message.max.bytes: the record batch of one
    record, as the producer builds it (no compression)."""
    b = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 2**31 - 1)
    b.append(0, timestamp=0, key=key, value=value, headers=headers)
    return len(b.build())


def largest_value(key: bytes, headers: list[tuple[str, bytes]]) -> int:
    """The largest value the broker accepts with `key` and `headers`."""
    n = BROKER_MAX - 200
    n += BROKER_MAX - batch_bytes(key, b"x" * n, headers)
    assert batch_bytes(key, b"x" * n, headers) == BROKER_MAX
    return n


@dataclass
class Sent:
    """What was sent, by source coordinates, and what the worker must do with it."""

    bad: dict[tuple[str, int, int], Bad] = field(default_factory=dict)
    featurize: dict[str, tuple[int, int, Bad]] = field(default_factory=dict)  # by event id
    good: list[str] = field(default_factory=list)  # event ids to be predicted
    refused: str = ""  # the producer's error for the oversized message


def largest_messages(uid: int) -> tuple[list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
                                        list[str], int]:
    """The largest messages the broker takes: a good JSON event padded with whitespace, an
    Arrow batch of good events with the longest ids, and a message that is not JSON.
    Returns (key, value, headers) each, the good event ids, and the not-JSON's index."""
    headers = [("content-type", JSON.encode()), ("schema", SCHEMA["sensor-events"])]
    doc = {"event_id": f"big-{uid}", "sensor_id": "big-json", "event_time": T0,
           "readings": SHUTTLE_ROW}
    n = largest_value(b"big-json", headers)
    padded = orjson.dumps(doc)[:-1] + b" " * (n - len(orjson.dumps(doc))) + b"}"
    sensor = "b" * MAX_ID
    rows = 8 * 1024 * 1024 // 600
    ids = [f"{i:08d}".ljust(MAX_ID, "e") for i in range(rows)]
    t = pa.table({"event_id": ids, "sensor_id": [sensor] * rows,
                  "event_time": pa.array([T0 + i for i in range(rows)], pa.int64()),
                  **{r: [SHUTTLE_ROW[r.removeprefix("readings.")]] * rows for r in READINGS}})
    arrow = write_ipc(t)
    arrow_headers = ARROW_HEADERS["sensor-events"]
    fit = largest_value(sensor.encode(), arrow_headers)
    while len(arrow) > fit:  # as many rows as fit under the limit
        t = t.slice(0, t.num_rows * fit // len(arrow) - 1)
        arrow = write_ipc(t)
    junk = b"{" + b"x" * (largest_value(b"fuzz", headers) - 1)
    return ([(b"big-json", padded, headers), (sensor.encode(), arrow, arrow_headers),
             (b"fuzz", junk, headers)], [doc["event_id"], *t.column("event_id").to_pylist()], 2)


async def produce(s: Settings, bad: list[Bad]) -> Sent:
    """The good shuttle events with the bad messages spread between them, then the largest
    messages the broker takes, then one a byte too large."""
    events = shuttle(limit=GOOD, sensors=4)
    values = sensor_json(events)
    keys = events.column("sensor_id").to_pylist()
    headers = [("content-type", JSON.encode()), ("schema", SCHEMA["sensor-events"])]
    sent = Sent(good=events.column("event_id").to_pylist())
    after: list[list[Bad]] = [[] for _ in range(GOOD)]  # the bad ones after each good one
    for j, b in enumerate(bad):
        after[j * GOOD // len(bad)].append(b)
    big, big_ids, junk_at = largest_messages(len(bad))
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=5,
                                max_request_size=2 * BROKER_MAX, request_timeout_ms=60_000)
    await producer.start()
    try:
        good: list[asyncio.Future[Any]] = []
        bad_sent: list[tuple[asyncio.Future[Any], Bad]] = []
        for k, v, then in zip(keys, values, after, strict=True):
            good.append(await producer.send(s.topic("sensor-events"), v, key=k.encode(),
                                            headers=headers))
            for b in then:
                bad_sent.append((await producer.send(s.topic(b.topic), b.value, key=b.key,
                                                     headers=b.headers), b))
        for j, (key, value, h) in enumerate(big):
            fut = await producer.send(s.topic("sensor-events"), value, key=key, headers=h)
            if j == junk_at:
                bad_sent.append((fut, Bad("sensor-events", value, h, "largest not-json", key)))
            else:
                good.append(fut)
        await asyncio.gather(*good)
        for fut, b in bad_sent:
            meta = await fut
            sent.good += b.good
            if b.featurize is not None:
                sent.featurize[b.featurize] = (meta.partition, meta.offset, b)
            else:
                sent.bad[(b.topic, meta.partition, meta.offset)] = b
        sent.good += big_ids
        key, value, h = big[junk_at]
        with pytest.raises(MessageSizeTooLargeError) as refused:
            await (await producer.send(s.topic("sensor-events"), value + b"x", key=key,
                                       headers=h))
        sent.refused = str(refused.value)
    finally:
        await producer.stop()
    return sent


def letters_of(s: Settings) -> list[dict[str, Any]]:
    return [orjson.loads(v) for _, _, v in asyncio.run(read_all(s, s.topic("dead-letters")))]


@pytest.mark.integration
def test_bad_messages_are_dead_lettered_and_good_ones_predicted(settings: Settings,
                                                                worker: Worker) -> None:
    s = settings
    # CI runs a fixed seed; HEADWATER_FUZZ_SEED=random draws one. The draw from a seed
    # also depends on the Hypothesis tests run before it in the same process. (In the full
    # suite, seed 1362799324 found the repr of a label nested 1,000 deep recursing.)
    chosen = os.environ.get("HEADWATER_FUZZ_SEED") or "1612032997"
    at = secrets.randbelow(2**32) if chosen == "random" else int(chosen)
    started = time.monotonic()
    bad = generate(BAD, at)
    generated = time.monotonic()
    pid = worker.proc.pid
    sent = asyncio.run(produce(s, bad))
    produced = time.monotonic()
    kinds = Counter(b.kind.split(" [")[0].split("=")[0] for b in bad)
    print(f"fuzz seed {at} (HEADWATER_FUZZ_SEED): {len(sent.bad)} bad messages, "
          f"{len(sent.featurize)} for featurize to refuse, {len(sent.good)} good events; "
          f"kinds: {dict(kinds)}")
    assert "MessageSizeTooLarge" in sent.refused, sent.refused  # the broker's error 10
    expected = sum(1 if b.rows is None else len(b.rows) for b in sent.bad.values()) \
        + len(sent.featurize)

    def predicted() -> set[str]:
        return {orjson.loads(v)["event_id"]
                for _, _, v in asyncio.run(read_all(s, s.topic("predictions")))}

    wait_for(lambda: asyncio.run(caught_up(s)) and len(letters_of(s)) >= expected, 150,
             f"the worker to commit every input and send {expected} dead letters",
             interval=1.0, detail=lambda: (asyncio.run(behind(s)), len(letters_of(s))))
    wait_for(lambda: len(predicted()) >= len(sent.good), 60, "every good event predicted",
             interval=1.0, detail=lambda: sorted(set(sent.good) - predicted())[:5])

    print(f"generated in {generated - started:.0f}s, sent in {produced - generated:.0f}s, "
          f"handled {time.monotonic() - produced:.0f}s later")
    letters = letters_of(s)
    by_source: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for d in letters:
        by_source.setdefault((d["source_topic"], d["source_partition"], d["source_offset"]),
                             []).append(d)
    assert all(d["reason"] in REASONS for d in letters)
    missing, wrong = [], []
    for (topic, p, o), b in sent.bad.items():
        got = by_source.pop((s.topic(topic), p, o), [])
        if not got:
            missing.append((topic, p, o, b.kind, (b.value or b"")[:80]))
            continue
        rows = tuple(sorted(d["source_row"] for d in got)) if b.rows is not None else None
        if (rows != b.rows if b.rows is not None else
                len(got) != 1 or got[0]["source_row"] is not None):
            wrong.append((b.kind, b.rows, [(d["reason"], d["source_row"]) for d in got]))
        for d in got:
            raw = b.value or b""
            assert d["agent"] == "ingest"
            assert base64.b64decode(d["raw_b64"]) == raw[:RAW_KEPT]
            assert d["raw_truncated"] == (len(raw) > RAW_KEPT)
            assert base64.b64decode(d["source_key_b64"]) == b.key
    assert not missing, f"{len(missing)} bad messages not dead-lettered: {missing[:5]}"
    assert not wrong, f"{len(wrong)} dead-lettered wrongly: {wrong[:5]}"

    # refused by featurize: dead-lettered on sensor-batches, at the row holding the event
    batches = {(p, o): v for p, o, v in asyncio.run(read_all(s, s.topic("sensor-batches")))}
    for key, got in list(by_source.items()):
        if key[0] != s.topic("sensor-batches"):
            continue
        for d in got:
            event = orjson.loads(base64.b64decode(d["raw_b64"]))
            p, o, b = sent.featurize.pop(event["event_id"])
            assert d["agent"] == "featurize" and d["reason"] in ("out-of-range", "future"), d
            assert key[1] == p, (d, p)
            row = read_ipc(batches[key[1:]]).slice(d["source_row"], 1).to_pylist()[0]
            assert (row["event_id"], row["source_offset"]) == (event["event_id"], o), (d, row)
        del by_source[key]
    assert not sent.featurize, f"not refused by featurize: {list(sent.featurize)[:5]}"
    assert not by_source, f"dead letters for good messages: {list(by_source.values())[:5]}"

    predictions = [orjson.loads(v)["event_id"]
                   for _, _, v in asyncio.run(read_all(s, s.topic("predictions")))]
    assert sorted(predictions) == sorted(sent.good)

    assert worker.running() and worker.proc.pid == pid
    log = worker.log.read_text(errors="replace")
    loud = [line for line in log.splitlines() if '"level":"ERROR"' in line
            or '"level":"CRITICAL"' in line or "Traceback" in line or "crashed" in line]
    assert not loud, loud[:5]
    text = urllib.request.urlopen(f"http://127.0.0.1:{s.web_port}/metrics", timeout=10
                                  ).read().decode()
    counted = sum(float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("headwater_dead_letters_total{"))
    assert counted == len(letters) == expected
    assert metric(text, 'headwater_events_total{agent="infer"}') == len(sent.good)
