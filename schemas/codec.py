"""Bytes to typed events, or a reason they are not: the one decode path for input topics.

A message is one JSON event (`content-type: application/json`, the default when the
header is absent) or one Arrow IPC stream holding a batch of events
(`application/vnd.apache.arrow.stream`). Decoding never raises on bad input: it returns
`Rejected` with a short machine-readable reason, which the caller sends to the
dead-letter topic.

Sensor events become columns of one Arrow record batch (`SENSOR_BASE` plus one float64
column `readings.<name>` per reading), so the agents after ingest work in columns.

>>> b = SensorBatchBuilder()
>>> b.add(b'{"event_id":"e1","sensor_id":"s","event_time":5,"readings":{"t":1.5}}', [], 0, None, 9)
>>> b.add(b'{"event_id":"e2"}', [], 1, None, 9)
Rejected(reason='missing-field', detail='sensor_id', row=None)
>>> batch = b.build()
>>> batch.num_rows, batch.column("readings.t").to_pylist()
(1, [1.5])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from schemas.events import ARROW, JSON, SensorEvent

__all__ = [
    "READING_PREFIX",
    "BatchBuilder",
    "SENSOR_BASE",
    "Rejected",
    "SensorBatchBuilder",
    "check_id",
    "read_checked",
    "check_time",
    "content_kind",
    "decode_sensor_json",
    "header",
    "read_ipc",
    "sensor_batch",
    "shown",
    "validate_sensor_table",
    "with_metadata",
    "write_ipc",
    "write_ipc_parts",
]

Headers = Sequence[tuple[str, bytes]]


class Record(Protocol):
    """What `add_records` reads of a consumed message (aiokafka's ConsumerRecord has it)."""

    value: bytes | None
    headers: Headers
    offset: int
    timestamp: int | None


READING_PREFIX = "readings."
MAX_ID = 256
MAX_READINGS = 64
MAX_TIME = 32_503_680_000_000  # year 3000, in ms
SENSOR_SCHEMAS = frozenset({b"sensor-event.v1"})

METADATA = ("source_time", "source_offset", "ingest_time")
SENSOR_BASE = pa.schema([
    ("event_id", pa.string()),
    ("sensor_id", pa.string()),
    ("event_time", pa.int64()),
    ("source_time", pa.int64()),
    ("source_offset", pa.int64()),
    ("ingest_time", pa.int64()),
])


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a message, or one row of an Arrow batch, could not be decoded."""

    reason: str
    detail: str
    row: int | None = None


def header(headers: Headers, name: str) -> bytes | None:
    """The last value of header `name`, or None.

    >>> header([("schema", b"a"), ("schema", b"b")], "schema")
    b'b'
    """
    found = None
    for k, v in headers:
        if k == name:
            found = v
    return found


def content_kind(headers: Headers, schemas: Collection[bytes]) -> str | Rejected:
    """JSON or ARROW, from a message's `content-type` (JSON when absent), or why its
    headers are refused: a `schema` not in `schemas`, or an unknown content type.

    >>> content_kind([("schema", b"sensor-event.v2")], SENSOR_SCHEMAS)
    Rejected(reason='unknown-schema', detail='sensor-event.v2', row=None)
    >>> content_kind([], SENSOR_SCHEMAS) == JSON
    True
    """
    ctype = header(headers, "content-type")
    schema = header(headers, "schema")
    if schema is not None and schema not in schemas:
        return Rejected("unknown-schema", schema.decode(errors="replace")[:100])
    if ctype == ARROW.encode():
        return ARROW
    if ctype is not None and ctype != JSON.encode():
        return Rejected("unknown-content-type", ctype.decode(errors="replace")[:100])
    return JSON


def check_time(d: dict[str, object]) -> int | Rejected:
    """The `event_time` of a decoded JSON event: integer epoch ms in range, or why not.

    >>> check_time({"event_time": 5.0}), check_time({})
    (5, Rejected(reason='missing-field', detail='event_time', row=None))
    """
    t = d.get("event_time")
    if t is None:
        return Rejected("missing-field", "event_time")
    if type(t) is float and t.is_integer():
        t = int(t)  # JSON Schema counts 5.0 as an integer
    if type(t) is not int:
        return Rejected("wrong-type", f"event_time: expected integer ms, got {type(t).__name__}")
    if not 0 <= t <= MAX_TIME:
        return Rejected("out-of-range", f"event_time {t} not in 0..{MAX_TIME}")
    return t


def shown(value: object, limit: int = 80) -> str:
    """A short, safe description of an untrusted decoded value for a reason or log line.

    Strings and numbers are quoted (strings cut to `limit` characters); a container is
    named by its type and length, so a deeply nested document is never repr'd (that
    recurses past Python's limit).

    >>> shown("bot"), shown(2.5), shown([[[1]]]), shown("x" * 100, 3)
    ("'bot'", '2.5', 'a list of 1', "'xxx'...")
    """
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:limit]
    if isinstance(value, list | tuple | dict | set):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def check_id(d: dict[str, object], name: str) -> str | Rejected:
    v = d.get(name)
    if v is None:
        return Rejected("missing-field", name)
    if not isinstance(v, str):
        return Rejected("wrong-type", f"{name}: expected string, got {type(v).__name__}")
    if not 0 < len(v) <= MAX_ID:
        return Rejected("out-of-range", f"{name}: length {len(v)} not in 1..{MAX_ID}")
    return v


def decode_sensor_json(value: bytes | None) -> SensorEvent | Rejected:
    """Validate one JSON SensorEvent (the rules of `sensor-event.v1.json`).

    >>> decode_sensor_json(b'{"event_id":"e","sensor_id":"s","event_time":1,"readings":{"x":1}}')
    SensorEvent(event_id='e', sensor_id='s', event_time=1, readings={'x': 1})
    >>> bad = b'{"event_id":"e","sensor_id":"s","event_time":1,"readings":{"x":NaN}}'
    >>> decode_sensor_json(bad).reason
    'not-json'
    >>> decode_sensor_json(b'{"event_id":"e","sensor_id":"s","event_time":true,"readings":{"x":1}}')
    Rejected(reason='wrong-type', detail='event_time: expected integer ms, got bool', row=None)
    """
    if not value:
        return Rejected("empty-value", "message value is empty or null")
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejected("not-json", str(exc))
    fast = _fast_event(d)
    if fast is not None:
        return SensorEvent(*fast)
    return _explain(d)


def _fast_event(d: object) -> tuple[str, str, int, dict[str, float]] | None:
    """The common, valid case checked in one expression; None means "look closer"."""
    if type(d) is not dict or len(d) != 4:
        return None
    e, s, t, r = d.get("event_id"), d.get("sensor_id"), d.get("event_time"), d.get("readings")
    if (type(e) is str and 0 < len(e) <= MAX_ID and type(s) is str and 0 < len(s) <= MAX_ID
            and type(t) is int and 0 <= t <= MAX_TIME and type(r) is dict
            and 0 < len(r) <= MAX_READINGS and set(map(type, r.values())) <= _NUMBERS
            and (r.keys() <= _GOOD_NAMES or _learn_names(r))):
        # orjson refuses NaN, Infinity and out-of-range numbers: all values are finite
        return e, s, t, r
    return None


_NUMBERS = {float, int}
_GOOD_NAMES: set[str] = set()


def _learn_names(readings: dict[str, object]) -> bool:
    """True when every reading name is valid; valid names are remembered (up to 10,000)."""
    for k in readings.keys() - _GOOD_NAMES:
        if not (0 < len(k) <= 64 and k.replace("_", "a").isalnum() and k.isascii()):
            return False
        if len(_GOOD_NAMES) < 10_000:
            _GOOD_NAMES.add(k)
    return True


def _explain(d: object) -> SensorEvent | Rejected:
    """The slow path: find the first rule a decoded document breaks."""
    if not isinstance(d, dict):
        return Rejected("not-an-object", f"top level is {type(d).__name__}")
    event_id = check_id(d, "event_id")
    if isinstance(event_id, Rejected):
        return event_id
    sensor_id = check_id(d, "sensor_id")
    if isinstance(sensor_id, Rejected):
        return sensor_id
    t = check_time(d)
    if isinstance(t, Rejected):
        return t
    readings = d.get("readings")
    if readings is None:
        return Rejected("missing-field", "readings")
    if not isinstance(readings, dict):
        return Rejected("wrong-type", f"readings: expected object, got {type(readings).__name__}")
    if not 0 < len(readings) <= MAX_READINGS:
        return Rejected("out-of-range", f"readings: {len(readings)} not in 1..{MAX_READINGS}")
    for k, v in readings.items():
        if type(v) is not float and type(v) is not int:
            return Rejected("wrong-type", f"readings.{k}: expected number, got {type(v).__name__}")
        if not math.isfinite(v):
            return Rejected("non-finite", f"readings.{k}")
        if not (0 < len(k) <= 64 and k.replace("_", "a").isalnum() and k.isascii()):
            return Rejected("bad-name", f"reading name {k[:80]!r}")
    extra = d.keys() - {"event_id", "sensor_id", "event_time", "readings"}
    if extra:
        return Rejected("unknown-field", ", ".join(sorted(extra))[:200])
    return SensorEvent(event_id, sensor_id, t, readings)


class BatchBuilder:
    """What the builders of both event kinds share: the header check of each message, the
    Arrow path, and the count. Subclasses hold the JSON columns and the Arrow checks."""

    schemas: frozenset[bytes] = frozenset()

    def __init__(self) -> None:
        self._parts: list[pa.RecordBatch] = []
        self._rows = 0
        self._json_headers: Headers | None = None

    def __len__(self) -> int:
        return self._rows

    def add(self, value: bytes | None, headers: Headers, offset: int,
            source_time: int | None, ingest_time: int) -> Rejected | list[Rejected] | None:
        """Decode one message; None when it was accepted whole.

        A JSON message gives one Rejected; an Arrow batch gives a list with one entry per
        rejected row (the good rows are kept), or one Rejected when the batch is unreadable.
        """
        if headers != self._json_headers:  # producers repeat the same headers: check once
            kind = content_kind(headers, self.schemas)
            if isinstance(kind, Rejected):
                return kind
            if kind == ARROW:
                return self._add_arrow(value, offset, source_time, ingest_time)
            self._json_headers = headers
        return self._add_json(value, offset, source_time, ingest_time)

    def _add_arrow(self, value: bytes | None, offset: int, source_time: int | None,
                   ingest_time: int) -> Rejected | list[Rejected] | None:
        checked = self._read_checked(value)
        if isinstance(checked, Rejected):
            return checked
        good, rejected = checked
        if good.num_rows:
            self._flush_json()
            good = with_metadata(good, source_time, offset, ingest_time, overwrite=True)
            self._parts.extend(self._batches(good))
            self._rows += good.num_rows
        return rejected or None

    def _add_json(self, value: bytes | None, offset: int, source_time: int | None,
                  ingest_time: int) -> Rejected | None:
        raise NotImplementedError

    def _read_checked(self, value: bytes | None
                      ) -> Rejected | tuple[pa.Table, list[Rejected]]:
        raise NotImplementedError

    def _batches(self, table: pa.Table) -> list[pa.RecordBatch]:
        batches: list[pa.RecordBatch] = table.combine_chunks().to_batches()
        return batches

    def _flush_json(self) -> None:
        raise NotImplementedError


class SensorBatchBuilder(BatchBuilder):
    """Collects decoded sensor events, from JSON or Arrow messages, into one record batch.

    Rows keep the order of the messages they came from, so per-sensor state downstream
    sees each sensor's events in offset order.
    """

    schemas = SENSOR_SCHEMAS

    def __init__(self) -> None:
        super().__init__()
        self._base: dict[str, list[object]] = {f.name: [] for f in SENSOR_BASE}
        self._readings: list[dict[str, float]] = []

    def _read_checked(self, value: bytes | None
                      ) -> Rejected | tuple[pa.Table, list[Rejected]]:
        return _read_checked(value)

    def _add_json(self, value: bytes | None, offset: int, source_time: int | None,
                  ingest_time: int) -> Rejected | None:
        ev = decode_sensor_json(value)
        if isinstance(ev, Rejected):
            return ev
        b = self._base
        b["event_id"].append(ev.event_id)
        b["sensor_id"].append(ev.sensor_id)
        b["event_time"].append(ev.event_time)
        b["source_time"].append(source_time)
        b["source_offset"].append(offset)
        b["ingest_time"].append(ingest_time)
        self._readings.append(ev.readings)
        self._rows += 1
        return None

    def add_records(self, records: Sequence[Record], ingest_time: int
                    ) -> list[tuple[int, Rejected]]:
        """`add` for every record of a poll; returns (index in `records`, reason) per reject.

        The loop inlines the valid-JSON case (the hot path of ingest, DESIGN.md §6) and
        hands anything else to `add`, which finds the reason.
        """
        rejected: list[tuple[int, Rejected]] = []
        b = self._base
        ids, sensors, times = b["event_id"], b["sensor_id"], b["event_time"]
        sources, offsets, ingests = b["source_time"], b["source_offset"], b["ingest_time"]
        readings = self._readings
        loads, fast_event = orjson.loads, _fast_event
        fast_headers = self._json_headers
        for i, rec in enumerate(records):
            value, headers = rec.value, rec.headers
            if value and headers == fast_headers:
                try:
                    fast = fast_event(loads(value))
                except orjson.JSONDecodeError:
                    fast = None
                if fast is not None:
                    ids.append(fast[0])
                    sensors.append(fast[1])
                    times.append(fast[2])
                    sources.append(rec.timestamp)
                    offsets.append(rec.offset)
                    ingests.append(ingest_time)
                    readings.append(fast[3])
                    self._rows += 1
                    continue
            bad = self.add(value, headers, rec.offset, rec.timestamp, ingest_time)
            fast_headers = self._json_headers
            if isinstance(bad, Rejected):
                rejected.append((i, bad))
            elif bad:
                rejected += [(i, r) for r in bad]
        return rejected

    def _flush_json(self) -> None:
        if not self._readings:
            return
        keys = sorted(set().union(*self._readings))  # C-level pass over every key
        cols = [pa.array(self._base[f.name], f.type) for f in SENSOR_BASE]
        try:  # every event has every reading: one C-level pass builds the matrix
            rows = list(map(itemgetter(*keys), self._readings)) if len(keys) > 1 else \
                [(r[keys[0]],) for r in self._readings]
            matrix = np.array(rows, dtype=np.float64)
            cols += [pa.array(matrix[:, j]) for j in range(len(keys))]
        except KeyError:  # some lack some: null there (float(): an int past 2**53 is valid)
            cols += [pa.array([None if (x := r.get(k)) is None else float(x)
                               for r in self._readings], pa.float64()) for k in keys]
        schema = _with_readings(keys)
        self._parts.append(pa.RecordBatch.from_arrays(cols, schema=schema))
        for column in self._base.values():  # in place: add_records holds these lists
            column.clear()
        self._readings.clear()

    def build(self) -> pa.RecordBatch:
        """One record batch of everything added, in message order; the builder is emptied."""
        self._flush_json()
        keys = sorted({n.removeprefix(READING_PREFIX) for p in self._parts
                       for n in p.schema.names if n.startswith(READING_PREFIX)})
        schema = _with_readings(keys)
        parts = [_conform(p, schema) for p in self._parts]
        self._parts, self._rows = [], 0
        if not parts:
            return pa.RecordBatch.from_pylist([], schema=schema)
        return parts[0] if len(parts) == 1 else pa.concat_batches(parts)


def _with_readings(keys: Iterable[str]) -> pa.Schema:
    return _readings_schema(tuple(keys))


@functools.lru_cache(maxsize=256)
def _readings_schema(keys: tuple[str, ...]) -> pa.Schema:
    schema = SENSOR_BASE
    for k in keys:
        schema = schema.append(pa.field(READING_PREFIX + k, pa.float64()))
    return schema


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    cols = []
    for f in schema:
        idx = batch.schema.get_field_index(f.name)
        cols.append(batch.column(idx) if idx >= 0 else pa.nulls(batch.num_rows, f.type))
    return pa.RecordBatch.from_arrays(cols, schema=schema)


Checked = Rejected | tuple[pa.Table, list[Rejected]]


#: the end-of-stream marker every Arrow IPC stream writer writes when it is closed
ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def read_checked(value: bytes | None, validate: Callable[[pa.Table], Checked]) -> Checked:
    """Read one Arrow message and check it with `validate`: the good rows and a reason
    per bad one, or one reason when the message is empty or unreadable.

    A stream must end with its end-of-stream marker: a reader takes a stream cut just
    after a message for a whole one, so a batch cut after its schema would read as no
    rows at all, and pass unnoticed.

    >>> t = pa.table({"a": [1]})
    >>> read_checked(write_ipc(t)[:-8], lambda t: (t, [])).reason
    'bad-arrow'
    """
    if not value:
        return Rejected("empty-value", "message value is empty or null")
    if not value.endswith(ARROW_EOS):
        return Rejected("bad-arrow", "no end-of-stream marker: the stream is cut short")
    try:
        table = read_ipc(value)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        return Rejected("bad-arrow", str(exc)[:300])
    return validate(table)


def _read_checked(value: bytes | None) -> Checked:
    return read_checked(value, validate_sensor_table)


def validate_sensor_table(table: pa.Table) -> Rejected | tuple[pa.Table, list[Rejected]]:
    """Check an Arrow batch of sensor events; keep the good rows, list the bad ones."""
    names = table.schema.names
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        return Rejected("bad-arrow", f"duplicate columns: {', '.join(dup)}"[:300])
    for col in ("event_id", "sensor_id", "event_time"):
        if col not in names:
            return Rejected("missing-field", col)
    readings = [n for n in names if n.startswith(READING_PREFIX)]
    if not readings:
        return Rejected("missing-field", "readings")
    try:
        ids = _as(table.column("event_id"), pa.string())
        sensors = _as(table.column("sensor_id"), pa.string())
        t = table.column("event_time")
        if pa.types.is_timestamp(t.type):
            t = t.cast(pa.timestamp("ms")).cast(pa.int64())
        t = _as(t, pa.int64())
        values = [_as(table.column(n), pa.float64()) for n in readings]
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        return Rejected("wrong-type", str(exc)[:300])
    keep = _valid(ids) & _valid(sensors)  # numpy: a few calls per message, not per reading
    times = (t if t.null_count == 0 else pc.fill_null(t, -1)).to_numpy(zero_copy_only=False)
    keep &= (times >= 0) & (times <= MAX_TIME)
    x = np.column_stack([v.to_numpy(zero_copy_only=False) for v in values])
    present = np.column_stack([_valid(v) for v in values])
    non_finite = present & ~np.isfinite(x)
    bad: list[Rejected] = []
    if non_finite.any():  # reading by reading, row by row
        cols, rows = np.nonzero(non_finite.T)
        bad = [Rejected("non-finite", readings[c], r)
               for c, r in zip(cols.tolist(), rows.tolist(), strict=True)]
        keep &= ~non_finite.any(axis=1)
    any_reading = present.any(axis=1)
    keep &= any_reading
    flagged = {r.row for r in bad}
    for row in np.flatnonzero(~keep).tolist():
        if row not in flagged:
            bad.append(Rejected("invalid-row", "null id, event_time out of range, or no reading",
                                row))
    meta = [n for n in METADATA if n in names]
    try:
        kept = [table.column(n).cast(pa.int64()) for n in meta]
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        return Rejected("wrong-type", str(exc)[:300])
    good = pa.table([ids, sensors, t, *kept, *values],
                    names=["event_id", "sensor_id", "event_time", *meta, *readings])
    if not keep.all():
        good = good.filter(pa.array(keep))
    bad.sort(key=lambda r: r.row or 0)
    return good, bad


def _as(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    """`column` cast to `kind` (no call when it is that already)."""
    return column if column.type == kind else column.cast(kind)


def _valid(column: pa.ChunkedArray) -> np.ndarray:
    """Which values of `column` are not null, as a numpy bool array."""
    if column.null_count == 0:
        return np.ones(len(column), bool)
    valid: np.ndarray = pc.is_valid(column).to_numpy(zero_copy_only=False)
    return valid


def with_metadata(table: pa.Table, source_time: int | None, offset: int, ingest_time: int,
                  *, overwrite: bool) -> pa.Table:
    """Set `source_time`, `source_offset` and `ingest_time` from the carrying message:
    all of them (`overwrite`, at ingest) or only those the batch lacks."""
    n = table.num_rows
    for name, value in zip(METADATA, (source_time, offset, ingest_time), strict=True):
        idx = table.schema.get_field_index(name)
        if idx >= 0 and not overwrite:
            continue
        col = pa.array([value] * n, pa.int64())
        table = table.set_column(idx, name, col) if idx >= 0 else table.append_column(name, col)
    return table


def sensor_batch(value: bytes | None, offset: int, source_time: int | None, now: int
                 ) -> Rejected | tuple[pa.RecordBatch, list[Rejected]]:
    """A message of `sensor-batches`, as featurize takes it: checked, metadata filled in.

    Ingest writes these, but a producer that batches may write them directly (DESIGN.md
    §2), so each one is validated like an Arrow message on an input topic.

    >>> t = pa.table({"event_id": ["a", "b"], "sensor_id": ["s", None], "event_time": [1, 2],
    ...               "readings.x": [1.0, 2.0]})
    >>> batch, bad = sensor_batch(write_ipc(t), 7, None, 9)
    >>> batch.column("source_offset").to_pylist(), [(r.reason, r.row) for r in bad]
    ([7], [('invalid-row', 1)])
    """
    checked = _read_checked(value)
    if isinstance(checked, Rejected):
        return checked
    good, bad = checked
    n = good.num_rows
    schema = _with_readings(name.removeprefix(READING_PREFIX) for name in good.schema.names
                            if name.startswith(READING_PREFIX))
    have = {name: i for i, name in enumerate(good.schema.names)}
    batch = good.combine_chunks().to_batches(max_chunksize=None)[0] if n else None
    filled = dict(zip(METADATA, (source_time, offset, now), strict=True))  # if it lacks them
    cols = []
    for field in schema:  # straight into the canonical column order
        if batch is not None and field.name in have:
            cols.append(batch.column(have[field.name]))
        elif filled.get(field.name) is not None:
            cols.append(pa.array(np.full(n, filled[field.name], np.int64)))
        else:
            cols.append(pa.nulls(n, field.type))
    return pa.RecordBatch.from_arrays(cols, schema=schema), bad


def write_ipc(batch: pa.RecordBatch | pa.Table) -> bytes:
    """Serialise a batch as one Arrow IPC stream (the value of one Kafka message)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write(batch)
    return bytes(sink.getvalue())


def write_ipc_parts(batch: pa.RecordBatch | pa.Table, limit: int) -> list[bytes]:
    """`batch` as Arrow IPC streams of at most `limit` bytes each, rows in order: one
    stream when it fits (a single row over the limit stays one stream).

    A batch re-encoded with more columns can outgrow the largest message the broker
    takes even when the messages it came from fit: sending it whole failed and stopped
    the stage.

    >>> t = pa.table({"a": list(range(1000))})
    >>> parts = write_ipc_parts(t, 3000)
    >>> len(parts) > 1, sum(read_ipc(p).num_rows for p in parts), max(map(len, parts)) <= 3000
    (True, 1000, True)
    """
    value = write_ipc(batch)
    if len(value) <= limit or batch.num_rows <= 1:
        return [value]
    step = max(1, batch.num_rows * limit // len(value) * 9 // 10)
    return [part for lo in range(0, batch.num_rows, step)
            for part in write_ipc_parts(batch.slice(lo, step), limit)]


def read_ipc(value: bytes) -> pa.Table:
    """Read one Arrow IPC stream message back into a table.

    >>> t = pa.table({"a": [1, 2]})
    >>> read_ipc(write_ipc(t)).equals(t)
    True
    """
    with pa.ipc.open_stream(pa.py_buffer(value)) as reader:
        return reader.read_all()

