"""Bytes to engagement events, or a reason they are not: the sensor codec's twin.

An engagement message is one JSON EngagementEvent (`content-type: application/json`, the
default when the header is absent) or one Arrow IPC stream holding a batch of them
(`application/vnd.apache.arrow.stream`), with the `schema` header `engagement-event.v1`
or none. Decoding never raises on bad input: it returns `Rejected` with the same short
reasons as `schemas.codec` (plus `bad-value` for a `kind` outside the schema's enum).

Events become rows of one Arrow record batch with the constant schema `ENGAGEMENT_BASE`.
`value` defaults to 1.0; `category` is null when absent; `context` is validated but not
carried (a batch has fixed columns; per user x category features need only `category`).

>>> ok = b'{"event_id":"e1","user_id":"u","item_id":"i","event_time":5,"kind":"click"}'
>>> b = EngagementBatchBuilder()
>>> b.add(ok, [], 0, None, 9)
>>> bad = b.add(ok.replace(b"click", b"like"), [], 1, None, 9)
>>> bad.reason, bad.detail
('bad-value', "kind: 'like' not in impression|click|rating|purchase")
>>> batch = b.build()
>>> batch.num_rows, batch.column("value").to_pylist(), batch.column("category").to_pylist()
(1, [1.0], [None])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from schemas.codec import (
    MAX_ID,
    MAX_TIME,
    METADATA,
    BatchBuilder,
    Record,
    Rejected,
    check_id,
    check_time,
    read_checked,
    with_metadata,
)
from schemas.events import EngagementEvent

__all__ = [
    "ENGAGEMENT_BASE",
    "KINDS",
    "EngagementBatchBuilder",
    "decode_engagement_json",
    "engagement_batch",
    "validate_engagement_table",
]

KINDS = ("impression", "click", "rating", "purchase")
ENGAGEMENT_SCHEMAS = frozenset({b"engagement-event.v1"})
ENGAGEMENT_BASE = pa.schema([
    ("event_id", pa.string()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("category", pa.string()),
    ("event_time", pa.int64()),
    ("kind", pa.string()),
    ("value", pa.float64()),
    ("source_time", pa.int64()),
    ("source_offset", pa.int64()),
    ("ingest_time", pa.int64()),
])

IDS = ("event_id", "user_id", "item_id")
FIELDS = frozenset({*IDS, "event_time", "kind", "value", "category", "context"})
_KINDS = frozenset(KINDS)
_KIND_LIST = "|".join(KINDS)
_CONTEXT_TYPES = {str, int, float, bool}
_ABSENT: Final[Any] = object()  # a key's absence; Any, so `get(k, _ABSENT)` stays Any

# event_id, user_id, item_id, category, event_time, kind, value: ENGAGEMENT_BASE's order
Row = tuple[str, str, str, str | None, int, str, float]


def decode_engagement_json(value: bytes | None) -> EngagementEvent | Rejected:
    """Validate one JSON EngagementEvent (the rules of `engagement-event.v1.json`).

    >>> ev = decode_engagement_json(b'{"event_id":"e","user_id":"u","item_id":"i",'
    ...     b'"event_time":1,"kind":"rating","value":4,"category":"Drama"}')
    >>> ev.value, ev.category, ev.context
    (4.0, 'Drama', {})
    >>> decode_engagement_json(b'{"event_id":"e","user_id":"u","item_id":"i",'
    ...     b'"event_time":1,"kind":"click","colour":"red"}')
    Rejected(reason='unknown-field', detail='colour', row=None)
    """
    if not value:
        return Rejected("empty-value", "message value is empty or null")
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejected("not-json", str(exc))
    fast = _fast_row(d)
    if fast is not None:
        e, u, i, c, t, k, v = fast
        return EngagementEvent(e, u, i, t, k, v, c, d.get("context") or {})
    return _explain(d)


def _fast_row(d: object) -> Row | None:
    """The valid case checked in one expression; None means "look closer" (`_explain`)."""
    if type(d) is not dict:
        return None
    get = d.get
    e, u, i, t, k = get("event_id"), get("user_id"), get("item_id"), get("event_time"), get("kind")
    v, c, x = get("value", _ABSENT), get("category", _ABSENT), get("context", _ABSENT)
    if (type(e) is str and 0 < len(e) <= MAX_ID and type(u) is str and 0 < len(u) <= MAX_ID
            and type(i) is str and 0 < len(i) <= MAX_ID and type(t) is int
            and 0 <= t <= MAX_TIME and type(k) is str and k in _KINDS
            and (v is _ABSENT or type(v) is float or type(v) is int)
            and (c is _ABSENT or type(c) is str and 0 < len(c) <= MAX_ID)
            and (x is _ABSENT or type(x) is dict and set(map(type, x.values())) <= _CONTEXT_TYPES)
            and len(d) == 5 + (v is not _ABSENT) + (c is not _ABSENT) + (x is not _ABSENT)):
        # orjson refuses NaN, Infinity and overflowing numbers: every number is finite
        return e, u, i, None if c is _ABSENT else c, t, k, 1.0 if v is _ABSENT else float(v)
    return None


def _explain(d: object) -> EngagementEvent | Rejected:
    """The slow path: find the first rule a decoded document breaks."""
    if not isinstance(d, dict):
        return Rejected("not-an-object", f"top level is {type(d).__name__}")
    ids: list[str] = []
    for name in IDS:
        got = check_id(d, name)
        if isinstance(got, Rejected):
            return got
        ids.append(got)
    t = check_time(d)
    if isinstance(t, Rejected):
        return t
    kind = d.get("kind")
    if kind is None:
        return Rejected("missing-field", "kind")
    if type(kind) is not str:
        return Rejected("wrong-type", f"kind: expected string, got {type(kind).__name__}")
    if kind not in _KINDS:
        return Rejected("bad-value", f"kind: {kind[:80]!r} not in {_KIND_LIST}")
    value = 1.0
    if "value" in d:
        v = d["value"]
        if type(v) is not float and type(v) is not int:
            return Rejected("wrong-type", f"value: expected number, got {type(v).__name__}")
        value = float(v)
        if not math.isfinite(value):
            return Rejected("non-finite", "value")
    category = None
    if "category" in d:
        c = d["category"]
        if type(c) is not str:
            return Rejected("wrong-type", f"category: expected string, got {type(c).__name__}")
        if not 0 < len(c) <= MAX_ID:
            return Rejected("out-of-range", f"category: length {len(c)} not in 1..{MAX_ID}")
        category = c
    context: dict[str, str | float | bool] = {}
    if "context" in d:
        x = d["context"]
        if not isinstance(x, dict):
            return Rejected("wrong-type", f"context: expected object, got {type(x).__name__}")
        for key, cv in x.items():
            if type(cv) not in _CONTEXT_TYPES:
                return Rejected("wrong-type", f"context.{key[:80]}: expected string, number or "
                                              f"boolean, got {type(cv).__name__}")
        context = x
    extra = d.keys() - FIELDS
    if extra:
        return Rejected("unknown-field", ", ".join(sorted(extra))[:200])
    return EngagementEvent(ids[0], ids[1], ids[2], t, kind, value, category, context)


class EngagementBatchBuilder(BatchBuilder):
    """Collects engagement events, from JSON or Arrow messages, into one record batch.

    Rows keep the order of the messages they came from, so per-user state downstream sees
    each user's events in offset order. The interface is `SensorBatchBuilder`'s.
    """

    schemas = ENGAGEMENT_SCHEMAS

    def __init__(self) -> None:
        super().__init__()
        # JSON events not yet in `_parts`, one list per column of ENGAGEMENT_BASE (lists of
        # atoms, not a tuple per event: nothing for the garbage collector to walk)
        self._cols: list[list[Any]] = [[] for _ in ENGAGEMENT_BASE]

    def _read_checked(self, value: bytes | None
                      ) -> Rejected | tuple[pa.Table, list[Rejected]]:
        return _read_checked(value)

    def _batches(self, table: pa.Table) -> list[pa.RecordBatch]:
        return [_one_batch(table)]

    def _add_json(self, value: bytes | None, offset: int, source_time: int | None,
                  ingest_time: int) -> Rejected | None:
        ev = decode_engagement_json(value)
        if isinstance(ev, Rejected):
            return ev
        row = (ev.event_id, ev.user_id, ev.item_id, ev.category, ev.event_time, ev.kind,
               ev.value, source_time, offset, ingest_time)
        for col, x in zip(self._cols, row, strict=True):
            col.append(x)
        self._rows += 1
        return None

    def add_records(self, records: Sequence[Record], ingest_time: int
                    ) -> list[tuple[int, Rejected]]:
        """`add` for every record of a poll; returns (index in `records`, reason) per reject.

        The loop inlines the valid-JSON case (the hot path of ingest, DESIGN.md §6): one
        orjson parse, one check, appends to column lists; anything else goes to `add`.
        """
        rejected: list[tuple[int, Rejected]] = []
        (ids, users, items, categories, times, kinds, values, sources, offsets,
         ingests) = (c.append for c in self._cols)  # _flush_json empties them in place
        loads, fast_row = orjson.loads, _fast_row
        fast_headers = self._json_headers
        added = 0
        for i, rec in enumerate(records):
            value, headers = rec.value, rec.headers
            if value and headers == fast_headers:
                try:
                    fast = fast_row(loads(value))
                except orjson.JSONDecodeError:
                    fast = None
                if fast is not None:
                    e, u, item, c, t, k, v = fast
                    ids(e)
                    users(u)
                    items(item)
                    categories(c)
                    times(t)
                    kinds(k)
                    values(v)
                    sources(rec.timestamp)
                    offsets(rec.offset)
                    ingests(ingest_time)
                    added += 1
                    continue
            bad = self.add(value, headers, rec.offset, rec.timestamp, ingest_time)
            fast_headers = self._json_headers
            if isinstance(bad, Rejected):
                rejected.append((i, bad))
            elif bad:
                rejected += [(i, r) for r in bad]
        self._rows += added
        return rejected

    def _flush_json(self) -> None:
        """Turn the pending JSON events into one record batch. The column lists are emptied
        in place, so the names `add_records` holds for them stay valid."""
        if not self._cols[0]:
            return
        arrays = [pa.array(c, f.type) for c, f in zip(self._cols, ENGAGEMENT_BASE, strict=True)]
        self._parts.append(pa.RecordBatch.from_arrays(arrays, schema=ENGAGEMENT_BASE))
        for c in self._cols:
            c.clear()

    def build(self) -> pa.RecordBatch:
        """One record batch of everything added, in message order; the builder is emptied."""
        self._flush_json()
        parts, self._parts, self._rows = self._parts, [], 0
        if not parts:
            return pa.RecordBatch.from_pylist([], schema=ENGAGEMENT_BASE)
        return parts[0] if len(parts) == 1 else pa.concat_batches(parts)


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    """All ENGAGEMENT_BASE columns of `table`, in order, as one record batch."""
    table = table.select(ENGAGEMENT_BASE.names).cast(ENGAGEMENT_BASE)
    if not table.num_rows:
        return pa.RecordBatch.from_pylist([], schema=ENGAGEMENT_BASE)
    return table.combine_chunks().to_batches(max_chunksize=None)[0]


def _read_checked(value: bytes | None) -> Rejected | tuple[pa.Table, list[Rejected]]:
    return read_checked(value, validate_engagement_table)


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t)
                or pa.types.is_string_view(t) or pa.types.is_null(t))


def _is_integer(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_null(t))


def _is_time(t: pa.DataType) -> bool:  # floats are cast safely: 5.0 passes, 5.5 does not
    return bool(_is_integer(t) or pa.types.is_floating(t) or pa.types.is_timestamp(t))


def _is_number(t: pa.DataType) -> bool:
    return bool(_is_integer(t) or pa.types.is_floating(t))


_COLUMN_TYPES = {**dict.fromkeys((*IDS, "kind", "category"), ("string", _is_string)),
                 "event_time": ("integer ms or timestamp", _is_time),
                 "value": ("number", _is_number),
                 **dict.fromkeys(METADATA, ("integer ms", _is_integer))}


def validate_engagement_table(table: pa.Table) -> Rejected | tuple[pa.Table, list[Rejected]]:
    """Check an Arrow batch of engagement events; keep the good rows, list the bad ones.

    Columns are those of `ENGAGEMENT_BASE`; `value`, `category` and the metadata columns may
    be absent, other columns are dropped. A column of the wrong type rejects the whole
    batch; each bad row is named once, by the first rule it breaks.

    >>> t = pa.table({"event_id": ["a", "b", "c"], "user_id": ["u", "u", ""],
    ...               "item_id": ["i"] * 3, "event_time": [1, 2, 3],
    ...               "kind": ["click", "like", "click"]})
    >>> good, bad = validate_engagement_table(t)
    >>> good.column("event_id").to_pylist(), [(r.reason, r.row) for r in bad]
    (['a'], [('bad-value', 1), ('out-of-range', 2)])
    """
    names = table.schema.names
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        return Rejected("bad-arrow", f"duplicate columns: {', '.join(dup)}"[:300])
    for col in (*IDS, "event_time", "kind"):
        if col not in names:
            return Rejected("missing-field", col)
    for col in names:
        expected, ok = _COLUMN_TYPES.get(col, ("", None))
        if ok is not None and not ok(table.schema.field(col).type):
            return Rejected("wrong-type",
                            f"{col}: expected {expected}, got {table.schema.field(col).type}")
    n = table.num_rows
    try:
        ids = [table.column(c).cast(pa.string()) for c in IDS]
        t = table.column("event_time")
        if pa.types.is_timestamp(t.type):
            t = t.cast(pa.timestamp("ms")).cast(pa.int64())
        t = t.cast(pa.int64())
        kind = table.column("kind").cast(pa.string())
        value = pc.fill_null(table.column("value").cast(pa.float64()), 1.0) if "value" in names \
            else pa.repeat(1.0, n)
        category = table.column("category").cast(pa.string()) if "category" in names \
            else pa.nulls(n, pa.string())
        meta = [m for m in METADATA if m in names]
        kept = [table.column(m).cast(pa.int64()) for m in meta]
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        return Rejected("wrong-type", str(exc)[:300])
    checks: list[tuple[str, str, Any]] = []
    for name, col in zip(IDS, ids, strict=True):
        checks += [("missing-field", name, pc.is_null(col)),
                   ("out-of-range", f"{name}: length not in 1..{MAX_ID}", _bad_length(col))]
    checks += [
        ("missing-field", "event_time", pc.is_null(t)),
        ("out-of-range", f"event_time not in 0..{MAX_TIME}",
         pc.or_(pc.less(t, 0), pc.greater(t, MAX_TIME))),
        ("missing-field", "kind", pc.is_null(kind)),
        ("bad-value", f"kind not in {_KIND_LIST}",
         pc.invert(pc.is_in(kind, value_set=pa.array(KINDS)))),
        ("non-finite", "value", pc.invert(pc.is_finite(value))),
        ("out-of-range", f"category: length not in 1..{MAX_ID}", _bad_length(category)),
    ]
    bad: list[Rejected] = []
    flagged: Any = None
    for reason, detail, mask in checks:
        mask = pc.fill_null(mask, False)
        new = mask if flagged is None else pc.and_(mask, pc.invert(flagged))
        bad += [Rejected(reason, detail, row) for row in pc.indices_nonzero(new).to_pylist()]
        flagged = mask if flagged is None else pc.or_(flagged, mask)
    good = pa.table([*ids, category, t, kind, value, *kept],
                    names=[*IDS, "category", "event_time", "kind", "value", *meta])
    if bad:
        good = good.filter(pc.invert(flagged))
        bad.sort(key=lambda r: r.row or 0)
    return good, bad


def _bad_length(strings: Any) -> Any:
    length = pc.utf8_length(strings)
    return pc.or_(pc.less(length, 1), pc.greater(length, MAX_ID))


def engagement_batch(value: bytes | None, offset: int, source_time: int | None, now: int
                     ) -> Rejected | tuple[pa.RecordBatch, list[Rejected]]:
    """A message of `engagement-batches`, as featurize takes it: checked, metadata filled in.

    Like `schemas.codec.sensor_batch`: metadata columns the batch carries are kept, the
    missing ones come from the carrying message.

    >>> from schemas.codec import write_ipc
    >>> t = pa.table({"event_id": ["a", "b"], "user_id": ["u", None], "item_id": ["i", "i"],
    ...               "event_time": [1, 2], "kind": ["click", "click"]})
    >>> batch, bad = engagement_batch(write_ipc(t), 7, None, 9)
    >>> batch.column("source_offset").to_pylist(), [(r.reason, r.detail, r.row) for r in bad]
    ([7], [('missing-field', 'user_id', 1)])
    """
    checked = _read_checked(value)
    if isinstance(checked, Rejected):
        return checked
    good, bad = checked
    return _one_batch(with_metadata(good, source_time, offset, now, overwrite=False)), bad
