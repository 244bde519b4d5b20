"""curate: predictions in, the samples most worth a label out to `curation` (DESIGN.md §3).

A consumer group (`<app>-curate`) on `predictions`, read in batches with aiokafka like
ingest, so scaling by partitions works as for the agents. Each poll's predictions
(JSON documents or Arrow batches) are decoded into columns per model; that model's
`models.curation.Curator` (settings: strategy, budget, window, slices) picks the rows to
label; their features are read back from the `features` message each prediction names
(`features_partition`, `features_offset`); each pick goes to `curation` as a
`CurationSample` keyed by event id, with the reason it was chosen. Offsets are committed
once the samples and dead letters are acknowledged (at-least-once).

Never twice: the curator remembers what it sent, and a worker that starts or takes
partitions over first reads back the event ids `curation` received within the budget
window, so predictions replayed after a crash are not sent again. Drift alerts (read
from `alerts` by every worker) raise the share of slices that have a `drift_boost`.
A prediction that cannot be read goes to `dead-letters` with its coordinates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from mode import Service

from models.curation import Chosen, Curator
from models.features import parse_duration
from schemas.codec import Rejected, header, read_ipc
from schemas.events import ARROW, JSON, CurationSample, DriftAlert, headers
from streams.metrics import (
    CONSUMER_LAG,
    CURATED,
    CURATION_BUDGET_USE,
    EVENTS,
    STAGE_SECONDS,
)
from streams.outbox import Outbox
from streams.settings import Settings
from streams.topics import partitions_of

__all__ = ["Curate", "PredictionBatch", "decode_predictions", "samples"]

log = logging.getLogger(__name__)

SAMPLE_HEADERS = headers(JSON, "curation-sample.v1")
MAX_RECORDS = 20_000  # predictions (messages) a poll takes, at most
ARROW_TYPE = ARROW.encode()
CT_ARROW = ("content-type", ARROW_TYPE)
NUMBERS = ("probability", "uncertainty", "variance", "head_probability")
INTS = ("event_time", "model_version", "head_version", "features_partition", "features_offset")


Id = Annotated[str, msgspec.Meta(min_length=1)]
Chance = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
INT64 = (-(1 << 63), (1 << 63) - 1)
Int64 = Annotated[int, msgspec.Meta(ge=INT64[0], le=INT64[1])]


class Doc(msgspec.Struct, frozen=True, gc=False):
    """The prediction.v1 fields curate reads, with `_check`'s rules as types: decoding
    one checks it (in C: a number is not a bool, an integer field refuses 5.0, a number
    JSON cannot hold as a double is out of range). Other fields are skipped. Untracked
    by the garbage collector (about 8% faster to decode): it holds no containers."""

    event_id: Id
    entity_id: Id
    model_name: Id
    probability: Chance
    model_version: Int64
    event_time: Int64
    uncertainty: float | None = None
    variance: float | None = None
    head_probability: Chance | None = None
    head_version: Int64 | None = None
    item_id: str | None = None
    features_partition: Int64 | None = None
    features_offset: Int64 | None = None


_DOC = msgspec.json.Decoder(Doc)


@dataclass
class PredictionBatch:
    """One model's predictions of a poll, as columns, with each row's coordinates.

    Arrow batches whose columns pass the checks as a whole stay columnar (`table`); a
    poll's JSON documents that all decode as `Doc`s are `docs` (with their columns,
    `doc_columns`); documents read one by one (JSON in a poll with a doubt, or Arrow
    rows with one) are `rows`. Rows count in that order; `records` holds the message each
    row came from, in that order (an Arrow batch's message once per row).
    """

    model: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    table: pa.Table | None = None
    docs: list[Doc] = field(default_factory=list)
    doc_columns: dict[str, np.ndarray] | None = None

    @property
    def where(self) -> list[tuple[str, int, int]]:
        """Each row's (topic, partition, offset), built when asked: the handler needs only
        the few chosen rows' records, and a tuple for every row cost 0.5 us an event."""
        return [(r.topic, r.partition, r.offset) for r in self.records]

    def __len__(self) -> int:
        return (0 if self.table is None else self.table.num_rows) + len(self.docs) \
            + len(self.rows)

    def row(self, i: int) -> dict[str, Any]:
        """Row `i` as a document."""
        n = 0 if self.table is None else self.table.num_rows
        if i < n:
            assert self.table is not None
            got: dict[str, Any] = self.table.slice(i, 1).to_pylist()[0]
            return got
        if i < n + len(self.docs):
            doc: dict[str, Any] = msgspec.structs.asdict(self.docs[i - n])
            return doc
        return self.rows[i - n - len(self.docs)]

    def columns(self) -> dict[str, np.ndarray]:
        """What the curator reads: the probability curated on is the online head's where
        one scored the event, else the deep model's."""
        parts = [self._table_columns()] if self.table is not None else []
        if self.doc_columns is not None:
            parts.append(self.doc_columns)
        if self.rows or not parts:
            parts.append(self._row_columns())
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        head = cols.pop("head_probability")
        cols["probability"] = np.where(np.isnan(head), cols["deep_probability"], head)
        return cols

    def _row_columns(self) -> dict[str, np.ndarray]:
        get = self.rows
        return {
            "event_id": np.array([r["event_id"] for r in get], object),
            "entity_id": np.array([r["entity_id"] for r in get], object),
            "item_id": np.array([r.get("item_id") for r in get], object),
            "event_time": np.array([r["event_time"] for r in get], np.int64),
            "deep_probability": np.array([r["probability"] for r in get], np.float64),
            "head_probability": np.array([np.nan if r.get("head_probability") is None
                                          else r["head_probability"] for r in get], np.float64),
            "variance": np.array([np.nan if r.get("variance") is None else r["variance"]
                                  for r in get], np.float64),
            "model_version": np.array([r["model_version"] for r in get], np.int64),
        }

    def _table_columns(self) -> dict[str, np.ndarray]:
        t = self.table
        assert t is not None
        n = t.num_rows

        def floats(name: str) -> np.ndarray:
            if name not in t.schema.names:
                return np.full(n, np.nan)
            got: np.ndarray = t.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy()
            return got

        return {
            "event_id": t.column("event_id").to_numpy(zero_copy_only=False).astype(object),
            "entity_id": t.column("entity_id").to_numpy(zero_copy_only=False).astype(object),
            "item_id": (t.column("item_id").to_numpy(zero_copy_only=False).astype(object)
                        if "item_id" in t.schema.names else np.full(n, None, object)),
            "event_time": t.column("event_time").cast(pa.int64()).to_numpy(),
            "deep_probability": floats("probability"),
            "head_probability": floats("head_probability"),
            "variance": floats("variance"),
            "model_version": t.column("model_version").cast(pa.int64()).to_numpy(),
        }


def _table_fine(t: pa.Table) -> bool:
    """True only if `_check` would pass every row of an Arrow batch of predictions, judged
    by column (`model_name` comes from the schema metadata; a batch with a model_name
    column, or any doubt, is read row by row, which names the bad rows)."""
    names = set(t.schema.names)
    if "model_name" in names or not (t.schema.metadata or {}).get(b"model_name"):
        return False
    for name in ("event_id", "entity_id"):
        if name not in names or not pa.types.is_string(t.schema.field(name).type):
            return False
        col = t.column(name)
        if col.null_count or (t.num_rows and pc.min(pc.utf8_length(col)).as_py() == 0):
            return False
    for name in NUMBERS:
        if name not in names:
            if name == "probability":
                return False
            continue
        typ, col = t.schema.field(name).type, t.column(name)
        if not (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
            return False
        if name == "probability" and col.null_count:
            return False
        v = col.cast(pa.float64()).drop_null().to_numpy()
        if not np.isfinite(v).all():
            return False
        if name.endswith("probability") and ((v < 0.0) | (v > 1.0)).any():
            return False
    for name in INTS:
        if name not in names:
            if name in ("event_time", "model_version"):
                return False
            continue
        if not pa.types.is_integer(t.schema.field(name).type):
            return False
        if name in ("event_time", "model_version") and t.column(name).null_count:
            return False
    return True


def _check(d: Any) -> dict[str, Any] | str:
    """A prediction document's fields curate uses, or why it cannot be used."""
    if not isinstance(d, dict):
        return f"a prediction is a JSON object, not {type(d).__name__}"
    for name in ("event_id", "entity_id", "model_name"):
        if not isinstance(d.get(name), str) or not d[name]:
            return f"{name}: expected a non-empty string"
    for name in NUMBERS:
        v = d.get(name)
        if v is None and name != "probability":
            continue
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            return f"{name}: expected a finite number"
        if name.endswith("probability") and not 0.0 <= v <= 1.0:
            return f"{name}: {v} is not in [0, 1]"
    for name in INTS:
        v = d.get(name)
        if v is None and name not in ("event_time", "model_version"):
            continue
        if type(v) is not int or not INT64[0] <= v <= INT64[1]:
            return f"{name}: expected a 64-bit integer"
    return d


def _all_fine(docs: list[Any]) -> bool:
    """True only if `_check` would pass every document: the same rules, one column at a
    time (a poll with any doubt is checked row by row, which names the bad ones)."""
    if not docs:
        return True
    if set(map(type, docs)) != {dict}:
        return False
    for name in ("event_id", "entity_id", "model_name"):
        col = [d.get(name) for d in docs]
        if set(map(type, col)) != {str} or not all(col):
            return False
    for name in NUMBERS:
        col = [d.get(name) for d in docs]
        allowed = {float, int} if name == "probability" else {float, int, type(None)}
        if not set(map(type, col)) <= allowed:
            return False
        v = np.array([x for x in col if x is not None], np.float64)
        if not np.isfinite(v).all():
            return False
        if name.endswith("probability") and ((v < 0.0) | (v > 1.0)).any():
            return False
    for name in INTS:
        col = [d.get(name) for d in docs]
        allowed = {int} if name in ("event_time", "model_version") else {int, type(None)}
        if not set(map(type, col)) <= allowed:
            return False
        ints = [x for x in col if x is not None]
        if ints and (min(ints) < INT64[0] or max(ints) > INT64[1]):
            return False
    return True


def _doc_columns(docs: list[Doc]) -> dict[str, np.ndarray]:
    """The columns the curator reads, of documents `Doc` has checked."""
    return {
        "event_id": np.array([d.event_id for d in docs], object),
        "entity_id": np.array([d.entity_id for d in docs], object),
        "item_id": np.array([d.item_id for d in docs], object),
        "event_time": np.array([d.event_time for d in docs], np.int64),
        "deep_probability": np.array([d.probability for d in docs], np.float64),
        # None is NaN here (a JSON number never is)
        "head_probability": np.array([d.head_probability for d in docs], np.float64),
        "variance": np.array([d.variance for d in docs], np.float64),
        "model_version": np.array([d.model_version for d in docs], np.int64),
    }


def _is_arrow(record: Any) -> bool:
    """Whether a message holds an Arrow batch; header() is asked only of those that hold
    an Arrow content type at all (it takes the last)."""
    return CT_ARROW in record.headers and header(record.headers, "content-type") == ARROW_TYPE


def _decode_docs(records: list[Any]) -> dict[str, PredictionBatch] | None:
    """A poll's JSON predictions as one batch per model, each document decoded and
    checked as a `Doc`; None if any fails (then each document is read and checked on
    its own, which names the bad ones)."""
    try:
        docs = [_DOC.decode(r.value or b"") for r in records]
    except msgspec.DecodeError:  # a ValidationError too
        return None
    models = {d.model_name for d in docs}
    if len(models) == 1:  # the usual poll: no copies
        (model,) = models
        return {model: PredictionBatch(model, records=records, docs=docs,
                                       doc_columns=_doc_columns(docs))}
    out: dict[str, PredictionBatch] = {}
    for model in models:
        mine = [i for i, d in enumerate(docs) if d.model_name == model]
        batch = PredictionBatch(model, records=[records[i] for i in mine],
                                docs=[docs[i] for i in mine])
        batch.doc_columns = _doc_columns(batch.docs)
        out[model] = batch
    return out


def decode_predictions(records: list[Any]
                       ) -> tuple[dict[str, PredictionBatch], list[tuple[Any, Rejected]]]:
    """A poll's prediction messages as one batch per model, and the ones refused.

    >>> class Rec:
    ...     topic, partition, headers = "p", 0, [("content-type", b"application/json")]
    ...     def __init__(self, value, offset): self.value, self.offset = value, offset
    >>> good = orjson.dumps({"event_id": "e1", "entity_id": "s", "probability": 0.4,
    ...     "uncertainty": 0.97, "model_name": "m", "model_version": 2, "event_time": 5})
    >>> batches, bad = decode_predictions([Rec(good, 7), Rec(b"{", 8),
    ...                                    Rec(good.replace(b"0.4", b"1.4"), 9)])
    >>> batches["m"].where, [(r.offset, why.detail) for r, why in bad]
    ([('p', 0, 7)], [(8, 'not JSON'), (9, 'probability: 1.4 is not in [0, 1]')])
    """
    out: dict[str, PredictionBatch] = {}
    bad: list[tuple[Any, Rejected]] = []
    decoded: list[tuple[Any, int, Any, bool]] = []  # record, row, document, one of many
    tables: dict[str, list[tuple[Any, pa.Table]]] = {}  # Arrow batches checked by column
    documents = [r for r in records if not _is_arrow(r)]
    fast = _decode_docs(documents) if documents else None
    if fast is not None and len(documents) == len(records):  # all JSON, all read
        return fast, bad
    for r in records:
        if _is_arrow(r):
            try:
                t = read_ipc(r.value)
            except (pa.ArrowInvalid, OSError) as exc:
                bad.append((r, Rejected("bad-arrow", str(exc)[:300])))
                continue
            name = (t.schema.metadata or {}).get(b"model_name", b"").decode()
            if _table_fine(t):
                tables.setdefault(name, []).append((r, t))
                continue
            docs: list[Any] = t.to_pylist()
            for d in docs:
                d.setdefault("model_name", d.get("model_name") or name)
        elif fast is not None:  # every document of the poll was read as a Doc
            continue
        else:
            try:
                docs = [orjson.loads(r.value or b"")]
            except orjson.JSONDecodeError:
                bad.append((r, Rejected("not-json", "not JSON")))
                continue
        decoded += [(r, row, d, len(docs) > 1) for row, d in enumerate(docs)]
    for model, got in tables.items():
        batch = out[model] = PredictionBatch(model)
        batch.table = pa.concat_tables([t for _, t in got], promote_options="permissive")
        for r, t in got:
            batch.records += [r] * t.num_rows
    for model, b in (fast or {}).items():  # after the tables' rows, before the others
        batch = out.setdefault(model, PredictionBatch(model))
        batch.docs, batch.doc_columns = b.docs, b.doc_columns
        batch.records += b.records
    if _all_fine([d for _, _, d, _ in decoded]):  # one check per column, not per row
        for r, _, d, _ in decoded:
            batch = out.setdefault(d["model_name"], PredictionBatch(d["model_name"]))
            batch.rows.append(d)
            batch.records.append(r)
        return out, bad
    for r, row, d, many in decoded:
        checked = _check(d)
        if isinstance(checked, str):
            bad.append((r, Rejected("bad-prediction", checked, row if many else None)))
            continue
        batch = out.setdefault(checked["model_name"], PredictionBatch(checked["model_name"]))
        batch.rows.append(checked)
        batch.records.append(r)
    return out, bad


def samples(batch: PredictionBatch, chosen: list[Chosen], strategy: str,
            features: dict[str, dict[str, float | None]]) -> list[CurationSample]:
    """The curation samples of a batch's chosen rows (features by event id, {} when they
    could not be read back)."""
    out = []
    for c in chosen:
        r = batch.row(c.row)
        p = r["probability"] if r.get("head_probability") is None else r["head_probability"]
        out.append(CurationSample(
            event_id=r["event_id"], entity_id=r["entity_id"], probability=float(p),
            uncertainty=float(r.get("uncertainty") or 0.0), strategy=strategy,
            reason=c.reason, model_version=r["model_version"], event_time=r["event_time"],
            features=features.get(r["event_id"], {}), slice=c.slice,
            head_version=r.get("head_version"), model_name=batch.model, score=c.score,
            weight=c.weight))
    return out


class FeatureReader:
    """Reads feature batch messages back by coordinates (a few kept decoded)."""

    def __init__(self, settings: Settings, keep: int = 8) -> None:
        self.settings = settings
        self.topic = settings.topic("features")
        self.keep = keep
        self.cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self.consumer: AIOKafkaConsumer | None = None

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def rows(self, wanted: dict[tuple[int, int], list[str]]
                   ) -> dict[str, dict[str, float | None]]:
        """Event id -> its features, for the events wanted at each (partition, offset)."""
        out: dict[str, dict[str, float | None]] = {}
        for (partition, offset), ids in wanted.items():
            try:
                t = await self._message(partition, offset)
            except Exception as exc:  # features are a courtesy: the sample still goes
                log.warning("curate: features at %s:%d:%d not read back (%r)", self.topic,
                            partition, offset, exc)
                continue
            if t is None:
                continue
            names = (t.schema.metadata or {}).get(b"feature_names", b"").decode().split(",")
            have = set(t.schema.names)  # once: `in t.schema.names` built the list per name
            names = [n for n in names if n in have]
            index = {e: i for i, e in enumerate(t.column("event_id").to_pylist())}
            at = [index[e] for e in ids if e in index]
            if not at:
                continue
            picked = t.take(at).select(["event_id", *names]).to_pylist()
            for row in picked:
                event_id = row.pop("event_id")
                out[event_id] = {k: (None if v is None or v != v else float(v))
                                 for k, v in row.items()}
        return out

    async def _message(self, partition: int, offset: int) -> pa.Table | None:
        key = (partition, offset)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        if self.consumer is None:
            self.consumer = AIOKafkaConsumer(**self.settings.kafka_options(),
                                             enable_auto_commit=False,
                                             auto_offset_reset="earliest",
                                             max_partition_fetch_bytes=16 * 1024 * 1024)
            await self.consumer.start()
        tp = TopicPartition(self.topic, partition)
        self.consumer.assign([tp])
        self.consumer.seek(tp, offset)
        found = None
        deadline = time.monotonic() + 10
        while found is None and time.monotonic() < deadline:
            got = (await self.consumer.getmany(tp, timeout_ms=1000, max_records=1)).get(tp, [])
            for r in got:
                if r.offset >= offset:
                    found = r
                    break
        if found is None or found.offset != offset:
            return None  # gone (retention) or never there
        t = read_ipc(found.value)
        self.cache[key] = t
        while len(self.cache) > self.keep:
            self.cache.popitem(last=False)
        return t


class Curate(Service):
    """The curate stage as a mode Service, started with the worker (see the module doc)."""

    def __init__(self, settings: Settings, outbox: Outbox) -> None:
        super().__init__()
        self.settings = settings
        self.outbox = outbox
        self.group = f"{settings.app_id}-curate"
        self.topic = settings.topic("predictions")
        self.curators: dict[str, Curator] = {}
        self.share = 1.0  # of the predictions partitions this worker holds
        self.restored: set[str] = set()  # event ids curation received before we started
        self.features = FeatureReader(settings)
        self.consumer: AIOKafkaConsumer | None = None
        self.alerts: AIOKafkaConsumer | None = None
        self._restore = False
        settings.curator()  # bad settings fail the worker's start, loudly

    async def on_start(self) -> None:
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            **s.kafka_options(), group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(s.session_timeout_ms // 5, 500),
            max_partition_fetch_bytes=8 * 1024 * 1024)
        self.consumer.subscribe([self.topic], listener=_Assigned(self))
        await self.consumer.start()
        self.alerts = AIOKafkaConsumer(**s.kafka_options(), enable_auto_commit=False,
                                       auto_offset_reset="latest")
        await self.alerts.start()
        parts = await partitions_of(self.alerts, s.topic("alerts"))
        self.alerts.assign([TopicPartition(s.topic("alerts"), p) for p in parts])

    async def on_stop(self) -> None:
        for c in (self.consumer, self.alerts):
            if c is not None:
                await c.stop()
        await self.features.stop()

    def curator(self, model: str) -> Curator:
        c = self.curators.get(model)
        if c is None:
            c = self.curators[model] = self.settings.curator(self.share)
            for event_id in self.restored:
                c.sent[event_id] = None
        return c

    def assigned(self, held: int, total: int) -> None:
        """Partitions changed hands: share a labels-an-hour budget out anew, and read back
        what curation received lately before the next poll."""
        self.share = held / total if total else 1.0
        fresh = self.settings.curator(self.share).budget
        for c in self.curators.values():
            c.budget = replace(c.budget, per_hour=fresh.per_hour)
        self._restore = held > 0

    async def restore_sent(self) -> None:
        """The event ids `curation` received within the budget window (and a margin)."""
        s = self.settings
        since = int(time.time() * 1000) - 2 * parse_duration(s.curate_window)
        reader = AIOKafkaConsumer(**s.kafka_options(), enable_auto_commit=False,
                                  auto_offset_reset="earliest")
        await reader.start()
        try:
            topic = s.topic("curation")
            tps = [TopicPartition(topic, p) for p in await partitions_of(reader, topic)]
            reader.assign(tps)
            starts = await reader.offsets_for_times({tp: since for tp in tps})
            ends = await reader.end_offsets(tps)
            for tp in tps:
                at = starts.get(tp)
                if at is None:
                    reader.seek(tp, ends[tp])
                else:
                    reader.seek(tp, at.offset)
            todo = {tp for tp in tps if await reader.position(tp) < ends[tp]}
            while todo:
                for tp, recs in (await reader.getmany(*todo, timeout_ms=1000)).items():
                    self.restored.update(r.key.decode() for r in recs if r.key)
                    if recs and recs[-1].offset + 1 >= ends[tp]:
                        todo.discard(tp)
        finally:
            await reader.stop()
        for c in self.curators.values():
            for event_id in self.restored:
                c.sent[event_id] = None
        log.info("curate: %d event ids already sent for labelling, read back from %s",
                 len(self.restored), s.topic("curation"))

    @Service.task
    async def _run(self) -> None:
        assert self.consumer is not None
        while not self.should_stop:
            polled = await self.consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
            try:
                if self._restore:
                    self._restore = False
                    await self.restore_sent()
                if any(polled.values()):
                    await self.handle([r for recs in polled.values() for r in recs])
                    await self._commit(polled)
            except Exception:  # never take the worker down: read the poll again
                log.exception("curate: a poll of %d predictions failed; reading it again",
                              sum(len(v) for v in polled.values()))
                await self._rewind()
                await asyncio.sleep(1.0)

    async def _commit(self, polled: dict[TopicPartition, list[Any]]) -> None:
        """Commit what was handled of the partitions still held (a rebalance may have
        moved some while the poll was handled: their next owner reads them again, and
        skips the samples sent here, see restore_sent)."""
        assert self.consumer is not None
        held = self.consumer.assignment()
        done = {tp: recs[-1].offset + 1 for tp, recs in polled.items() if recs and tp in held}
        try:
            await self.consumer.commit(done)
        except (CommitFailedError, IllegalStateError) as exc:
            log.info("curate: commit refused during a rebalance (%r); the next owner "
                     "reads those predictions again", exc)
            return
        for tp, offset in done.items():
            high = self.consumer.highwater(tp)
            if high is not None:
                CONSUMER_LAG.labels(self.group, tp.topic, str(tp.partition)).set(
                    max(0, high - offset))

    async def _rewind(self) -> None:
        """Back to the committed offsets of the partitions held."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            try:
                at = await self.consumer.committed(tp)
                if at is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, at)
            except Exception:
                log.exception("curate: could not rewind %s", tp)

    @Service.task
    async def _follow_alerts(self) -> None:
        assert self.alerts is not None
        span = parse_duration(self.settings.curate_drift_boost)
        while not self.should_stop:
            for recs in (await self.alerts.getmany(timeout_ms=1000)).values():
                for r in recs:
                    try:
                        a = DriftAlert(**orjson.loads(r.value))
                    except (orjson.JSONDecodeError, TypeError) as exc:
                        log.warning("curate: an alert at %s:%d:%d is not a drift alert (%r)",
                                    r.topic, r.partition, r.offset, exc)
                        continue
                    for c in self.curators.values():
                        for sl in c.slices:
                            if a.slice in (None, sl.name):
                                c.boost(sl.name, a.event_time + span)

    async def handle(self, records: list[Any]) -> None:
        """One poll: decode, choose, read features back, send, wait for the broker."""
        started = time.perf_counter()
        batches, rejected = decode_predictions(records)
        pending = [await self.outbox.dead_letter(
            "curate", why, topic=r.topic, partition=r.partition, offset=r.offset,
            key=r.key, raw=r.value) for r, why in rejected]
        out: list[CurationSample] = []
        for model, batch in batches.items():
            curator = self.curator(model)
            chosen = curator.choose(batch.columns())
            EVENTS.labels("curate").inc(len(batch))
            for name, use in curator.use().items():
                CURATION_BUDGET_USE.labels(model, name).set(use)
            if not chosen:
                continue
            wanted: dict[tuple[int, int], list[str]] = {}
            for c in chosen:
                r = batch.row(c.row)
                if r.get("features_offset") is not None:
                    wanted.setdefault((r["features_partition"], r["features_offset"]),
                                      []).append(r["event_id"])
            features = await self.features.rows(wanted)
            for sample in samples(batch, chosen, curator.strategy, features):
                out.append(sample)
                CURATED.labels(model, sample.slice or "rest").inc()
        if out:
            pending += await self.outbox.send_keyed(
                self.settings.topic("curation"), [x.event_id for x in out],
                [x.to_json() for x in out], SAMPLE_HEADERS)
        await asyncio.gather(*pending)
        STAGE_SECONDS.labels("curate").observe(time.perf_counter() - started)


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, curate: Curate) -> None:
        self.curate = curate

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        consumer = self.curate.consumer
        total = len(consumer.partitions_for_topic(self.curate.topic) or []) if consumer else 0
        self.curate.assigned(len(assigned), total or len(assigned))
