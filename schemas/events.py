"""The message shapes headwater reads and writes, as Python types.

Each type mirrors one JSON Schema file in `schemas/json/` (the contract for other
languages) and knows its schema name and version, which travel in the `schema` header.

>>> e = SensorEvent("e1", "s1", 1_700_000_000_000, {"temp": 21.5})
>>> SensorEvent.from_dict(orjson.loads(e.to_json())) == e
True
>>> e.headers()
[('content-type', b'application/json'), ('schema', b'sensor-event.v1')]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from typing import Any, ClassVar

import orjson

__all__ = [
    "ARROW",
    "JSON",
    "CurationSample",
    "DeadLetter",
    "DriftAlert",
    "HeadSnapshot",
    "EngagementEvent",
    "Label",
    "MetricsReport",
    "ModelUpdate",
    "Prediction",
    "SensorEvent",
    "headers",
    "json_schema",
    "schema_id",
]

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"


def headers(content_type: str, schema: str) -> list[tuple[str, bytes]]:
    """The two headers every headwater message carries (DESIGN.md §2).

    >>> headers(JSON, "prediction.v1")
    [('content-type', b'application/json'), ('schema', b'prediction.v1')]
    """
    return [("content-type", content_type.encode()), ("schema", schema.encode())]


def schema_id(name: str, version: int) -> str:
    """The value of the `schema` header: `name.vN`.

    >>> schema_id("sensor-event", 1)
    'sensor-event.v1'
    """
    return f"{name}.v{version}"


@cache
def json_schema(sid: str) -> dict[str, Any]:
    """The JSON Schema document for a schema id such as `prediction.v1`."""
    text = resources.files("schemas").joinpath("json", f"{sid}.json").read_text()
    doc: dict[str, Any] = json.loads(text)
    return doc


class _Message:
    schema_name: ClassVar[str]
    schema_version: ClassVar[int] = 1

    @classmethod
    def schema(cls) -> str:
        return schema_id(cls.schema_name, cls.schema_version)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses
        return d

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def headers(self) -> list[tuple[str, bytes]]:
        return headers(JSON, self.schema())


@dataclass(frozen=True, slots=True)
class SensorEvent(_Message):
    """One or more readings from one sensor at one event time (epoch milliseconds)."""

    schema_name: ClassVar[str] = "sensor-event"
    event_id: str
    sensor_id: str
    event_time: int
    readings: dict[str, float]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensorEvent:
        return cls(d["event_id"], d["sensor_id"], d["event_time"], dict(d["readings"]))


@dataclass(frozen=True, slots=True)
class EngagementEvent(_Message):
    """A user's impression of, or engagement with, an item.

    An absent `category` is left out of the JSON (the schema's `category` is a string):

    >>> e = EngagementEvent("e1", "u1", "i1", 5, "click")
    >>> "category" in e.to_dict(), EngagementEvent.from_dict(orjson.loads(e.to_json())) == e
    (False, True)
    """

    schema_name: ClassVar[str] = "engagement-event"
    event_id: str
    user_id: str
    item_id: str
    event_time: int
    kind: str
    value: float = 1.0
    category: str | None = None
    context: dict[str, str | float | bool] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngagementEvent:
        return cls(d["event_id"], d["user_id"], d["item_id"], d["event_time"], d["kind"],
                   d.get("value", 1.0), d.get("category"), dict(d.get("context") or {}))

    def to_dict(self) -> dict[str, Any]:
        d = _Message.to_dict(self)
        if d["category"] is None:  # the schema's category is a string when present
            del d["category"]
        return d


@dataclass(frozen=True, slots=True)
class Label(_Message):
    """The true outcome of one event: `source` is `outcome` or `human`."""

    schema_name: ClassVar[str] = "label"
    event_id: str
    value: float
    source: str
    label_time: int
    annotator: str | None = None
    model: str | None = None
    weight: int = 1  # learn it this many times: a curated random pick stands for more


@dataclass(frozen=True, slots=True)
class Prediction(_Message):
    """A model's score for one event, the versions that made it, and latency timestamps."""

    schema_name: ClassVar[str] = "prediction"
    event_id: str
    entity_id: str
    probability: float
    uncertainty: float
    model_name: str
    model_version: int
    event_time: int
    ingest_time: int
    predict_time: int
    source_time: int | None = None
    head_version: int | None = None
    variance: float | None = None
    item_id: str | None = None
    head_probability: float | None = None
    features_partition: int | None = None
    features_offset: int | None = None


@dataclass(frozen=True, slots=True)
class ModelUpdate(_Message):
    """A promotion: every worker serving `name` is to serve `version`.

    >>> ModelUpdate.from_dict({"name": "shuttle", "version": 2, "promoted_at": 5}).version
    2
    >>> ModelUpdate.from_dict({"name": "shuttle", "version": "2", "promoted_at": 5})
    Traceback (most recent call last):
    ...
    ValueError: a model update needs a name, a version >= 1 and promoted_at
    """

    schema_name: ClassVar[str] = "model-update"
    name: str
    version: int
    promoted_at: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelUpdate:
        name, version, at = d.get("name"), d.get("version"), d.get("promoted_at")
        if not (isinstance(name, str) and name and type(version) is int and version >= 1
                and type(at) is int):
            raise ValueError("a model update needs a name, a version >= 1 and promoted_at")
        return cls(name, version, at)


@dataclass(frozen=True, slots=True)
class CurationSample(_Message):
    """An event sent for labelling, with the reason it was chosen."""

    schema_name: ClassVar[str] = "curation-sample"
    event_id: str
    entity_id: str
    probability: float
    uncertainty: float
    strategy: str
    reason: str
    model_version: int
    event_time: int
    features: dict[str, float | None] = field(default_factory=dict)
    slice: str | None = None
    head_version: int | None = None
    model_name: str | None = None
    score: float | None = None
    weight: int = 1  # the label of this event is learned this many times (Curator)


@dataclass(frozen=True, slots=True)
class DeadLetter(_Message):
    """A message (or a row of an Arrow batch) an agent could not process, and why."""

    schema_name: ClassVar[str] = "dead-letter"
    agent: str
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    raw_b64: str
    dead_time: int
    source_row: int | None = None
    source_key_b64: str | None = None
    raw_truncated: bool = False


@dataclass(frozen=True, slots=True)
class MetricsReport(_Message):
    """Prequential metrics of one online head (cumulative and rolling), and its counts."""

    schema_name: ClassVar[str] = "metrics-report"
    name: str
    model: str
    version: int
    labels: int
    window: int
    cumulative: dict[str, float | None]
    rolling: dict[str, float | None]
    counts: dict[str, int]
    stream_time: int
    report_time: int


@dataclass(frozen=True, slots=True)
class DriftAlert(_Message):
    """A drift detector on an online head's errors fired, and what the head did."""

    schema_name: ClassVar[str] = "drift-alert"
    name: str
    model: str
    detector: str
    event_id: str
    event_time: int
    action: str
    labels: int
    rolling: dict[str, float | None]
    detected_at: int
    slice: str | None = None


@dataclass(frozen=True, slots=True)
class HeadSnapshot(_Message):
    """An online head's learner for serving (`state_b64`: zlib-compressed pickle)."""

    schema_name: ClassVar[str] = "head-snapshot"
    name: str
    model: str
    family: str
    version: int
    spec: str
    features: list[str]
    state_b64: str
    created_at: int
    training_offset: int
