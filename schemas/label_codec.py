"""Labels (`label.v1`, one JSON document per message) checked and collected into Arrow
batches for the learn stage, with each label's source coordinates.

>>> class Rec:
...     def __init__(self, value, offset):
...         self.value, self.offset, self.headers, self.timestamp = value, offset, [], None
>>> b = LabelBatchBuilder(partition=3)
>>> b.add_records([Rec(b'{"event_id":"e1","value":1,"source":"outcome","label_time":5}', 7),
...                Rec(b'{"event_id":"e2","value":"yes","source":"outcome","label_time":5}', 8)],
...               ingest_time=9)
[(1, Rejected(reason='wrong-type', detail='value: expected a finite number, got str', row=None))]
>>> b.build().to_pylist()[0]["source_offset"]
7
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa

from schemas.codec import MAX_ID, MAX_TIME, Record, Rejected, check_id, content_kind, shown

__all__ = ["LABEL_BATCH", "LABEL_SCHEMAS", "MAX_WEIGHT", "LabelBatchBuilder", "check_weight",
           "decode_label"]

LABEL_SCHEMAS = frozenset({b"label.v1"})
SOURCES = ("outcome", "human")
FIELDS = frozenset({"event_id", "value", "source", "label_time", "annotator", "model",
                    "weight"})
MAX_WEIGHT = 100
LABEL_BATCH = pa.schema([
    ("event_id", pa.string()), ("value", pa.float64()), ("source", pa.string()),
    ("label_time", pa.int64()), ("model", pa.string()), ("weight", pa.int32()),
    ("source_partition", pa.int32()), ("source_offset", pa.int64()),
    ("ingest_time", pa.int64())])


def check_weight(value: object) -> int | Rejected:
    """A label's or curation sample's weight (how many times the head learns the label):
    an integer in 1..MAX_WEIGHT, an integral float taken as one.

    >>> check_weight(2.0), check_weight(0)
    (2, Rejected(reason='out-of-range', detail='weight: 0 is not an integer in 1..100', row=None))
    """
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_WEIGHT:
        return Rejected("out-of-range", f"weight: {shown(value)} is not an integer in "
                                        f"1..{MAX_WEIGHT}")
    return value


def decode_label(value: bytes | None) -> dict[str, Any] | Rejected:
    """One label.v1 document, checked, or why it is refused.

    >>> decode_label(b'{"event_id":"e","value":0,"source":"human","label_time":1}')["value"]
    0.0
    >>> decode_label(b'{"event_id":"e","value":1,"source":"bot","label_time":1}')
    Rejected(reason='out-of-range', detail="source: 'bot' is not one of outcome, human", row=None)
    """
    try:
        d = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        return Rejected("not-json", str(exc)[:200])
    if not isinstance(d, dict):
        return Rejected("wrong-type", f"a label is a JSON object, not {type(d).__name__}")
    if extra := set(d) - FIELDS:
        return Rejected("unknown-field", ", ".join(sorted(extra))[:200])
    event_id = check_id(d, "event_id")
    if isinstance(event_id, Rejected):
        return event_id
    v = d.get("value")
    if not isinstance(v, int | float) or isinstance(v, bool):
        return Rejected("wrong-type", f"value: expected a finite number, got {type(v).__name__}")
    if not math.isfinite(v):
        return Rejected("out-of-range", f"value: {shown(v)} is not finite")
    source = d.get("source")
    if source not in SOURCES:
        return Rejected("out-of-range", f"source: {shown(source)} is not one of outcome, human")
    t = d.get("label_time")
    if type(t) is float and t.is_integer():
        t = int(t)
    if type(t) is not int or not 0 <= t <= MAX_TIME:
        return Rejected("wrong-type", f"label_time: expected integer ms in 0..{MAX_TIME}")
    for name in ("annotator", "model"):
        got = d.get(name)
        if got is not None and not (isinstance(got, str) and 0 < len(got) <= MAX_ID):
            return Rejected("wrong-type", f"{name}: expected a string of 1..{MAX_ID}")
    weight = check_weight(d.get("weight", 1))
    if isinstance(weight, Rejected):
        return weight
    return {"event_id": event_id, "value": float(v), "source": source, "label_time": t,
            "model": d.get("model"), "weight": weight}


class LabelBatchBuilder:
    """Labels of one source partition, one Arrow batch per poll (ingest's Builder)."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self._rows: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add_records(self, records: Sequence[Record], ingest_time: int
                    ) -> list[tuple[int, Rejected]]:
        rejected: list[tuple[int, Rejected]] = []
        for i, rec in enumerate(records):
            kind = content_kind(rec.headers, LABEL_SCHEMAS)
            if isinstance(kind, Rejected):
                rejected.append((i, kind))
                continue
            if kind != "application/json":
                rejected.append((i, Rejected("unknown-content-type",
                                             "labels are one JSON label.v1 per message")))
                continue
            got = decode_label(rec.value)
            if isinstance(got, Rejected):
                rejected.append((i, got))
                continue
            got.update(source_partition=self.partition, source_offset=rec.offset,
                       ingest_time=ingest_time)
            self._rows.append(got)
        return rejected

    def build(self) -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pylist(self._rows, schema=LABEL_BATCH)
        self._rows = []
        return batch
