"""export: a topic range to Parquet, decoded by the codecs ingest uses; the same range as
Arrow tables for replay.

A range (`Range`) is a set of partitions (all by default) and a start and an end, each
an offset or a Kafka timestamp in epoch ms; the start is inclusive and the end exclusive,
and the default end is each partition's end when the export starts. `read_range` yields
the decoded rows of a range, partition by partition in offset order within each, without
writing anything; `export_range` writes them to

    OUT/<topic>/date=YYYY-MM-DD/part-<partition>-<first offset>.parquet

(the date of each row's Kafka timestamp, UTC), readable with
`pyarrow.dataset.dataset(OUT/<topic>, partitioning="hive")`, or with `read_export`, which
returns the rows in Kafka's order. Messages that do not decode go to
`OUT/<topic>/_rejected/part-<partition>-<first offset>.parquet` with their coordinates,
the reason and the raw bytes. `OUT/<topic>/_export.json` records the range and each
partition's next offset; it is written only after the files it covers are closed, so a
second run after an interrupted one continues where the first stopped, and rows are
written once. (`_`-prefixed paths are skipped by `pyarrow.dataset`.)

Rows are what the live pipeline decodes: `sensor-events` and `engagement-events` through
the ingest builders (JSON or Arrow messages; `ingest_time` is the message's Kafka
timestamp, since the export cannot know when ingest read it), `labels` through the label
codec, `sensor-batches` and `engagement-batches` as featurize opens them; any other topic
gives one row per JSON object or per row of an Arrow batch, by its `content-type`. Every
row carries the coordinates of its message (`COORDINATES`).

>>> Range(start_offset=5, end_offset=2)
Traceback (most recent call last):
...
streams.export.ExportError: bad range: start offset 5 is after end offset 2
>>> parse_time("2024-01-01T00:00:00Z"), parse_time("1704067200000")
(1704067200000, 1704067200000)
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import Rejected, SensorBatchBuilder, header, read_ipc, sensor_batch
from schemas.engagement_codec import EngagementBatchBuilder, engagement_batch
from schemas.events import ARROW, JSON
from schemas.label_codec import LabelBatchBuilder
from streams.settings import Settings
from streams.topics import MAX_MESSAGE_BYTES

__all__ = ["COORDINATES", "REJECTED", "Chunk", "ExportError", "Range", "Span", "Summary",
           "decoder", "export_range", "parse_time", "read_chunks", "read_export", "read_range",
           "resolve"]

HEADERS_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
#: the columns every exported row ends with: where its message is in Kafka
COORDINATES = pa.schema([
    ("kafka_topic", pa.string()),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
    ("kafka_timestamp", pa.int64()),
    ("kafka_key", pa.binary()),
    ("kafka_headers", HEADERS_TYPE),
])
#: a message (or one row of an Arrow batch) that did not decode
REJECTED = pa.schema([*COORDINATES, ("reason", pa.string()), ("detail", pa.string()),
                      ("row", pa.int64()), ("raw", pa.binary())])
STATE_FILE = "_export.json"
REJECTED_DIR = "_rejected"
DAY_MS = 86_400_000
#: how often offsets passed over without a record are read again before they count as read
MAX_SKIP_CHECKS = 3
_PART = re.compile(r"part-(\d+)-(\d+)\.parquet")


class ExportError(RuntimeError):
    """An export cannot go on: a bad range, an unknown topic, an output of another range."""


@dataclass(frozen=True)
class Range:
    """Which messages: `partitions` (None: all), from a start offset or time (ms,
    inclusive; default the beginning) to an end offset or time (exclusive; default the
    partition's end when the read starts). Times are Kafka timestamps."""

    partitions: tuple[int, ...] | None = None
    start_offset: int | None = None
    end_offset: int | None = None
    start_time: int | None = None
    end_time: int | None = None

    def __post_init__(self) -> None:
        if self.start_offset is not None and self.start_time is not None:
            raise ExportError("bad range: give a start offset or a start time, not both")
        if self.end_offset is not None and self.end_time is not None:
            raise ExportError("bad range: give an end offset or an end time, not both")
        for name in ("start_offset", "end_offset", "start_time", "end_time"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ExportError(f"bad range: {name.replace('_', ' ')} {v} is negative")
        if self.partitions is not None:
            if not self.partitions:
                raise ExportError("bad range: an empty list of partitions")
            if bad := [p for p in self.partitions if p < 0]:
                raise ExportError(f"bad range: partition {bad[0]} does not exist")
        for a, b, what in ((self.start_offset, self.end_offset, "offset"),
                           (self.start_time, self.end_time, "time")):
            if a is not None and b is not None and a > b:
                raise ExportError(f"bad range: start {what} {a} is after end {what} {b}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["partitions"] = None if self.partitions is None else sorted(self.partitions)
        return d


@dataclass(frozen=True)
class Span:
    """One partition's part of a range, in offsets: [start, end)."""

    partition: int
    start: int
    end: int


@dataclass
class Chunk:
    """What one poll gave for one partition: its decoded rows (with `COORDINATES`), its
    rejected messages (`REJECTED`), and the offset after the last message it covers."""

    partition: int
    rows: pa.Table | None
    rejected: pa.Table | None
    next_offset: int


@dataclass
class Summary:
    """What an export wrote, in all its runs so far."""

    topic: str
    path: Path
    rows: int = 0
    rejected: int = 0
    messages: int = 0  # offsets covered
    total: int = 0  # offsets in the range
    files: int = 0
    complete: bool = False
    already: bool = False
    spans: list[Span] = field(default_factory=list)


def parse_time(text: str) -> int:
    """Epoch ms from an integer (ms) or an ISO 8601 time (UTC when it names no zone)."""
    if text.strip().isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ExportError(f"bad time {text!r}: expected ISO 8601 or epoch ms") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


# -- reading ------------------------------------------------------------------------

def _consumer(settings: Settings) -> AIOKafkaConsumer:
    # `earliest` before seeking: with `latest`, the reset of a newly assigned partition
    # can race the seek and read nothing (see streams/labelling.py)
    return AIOKafkaConsumer(**settings.kafka_options(), group_id=None,
                            enable_auto_commit=False, auto_offset_reset="earliest",
                            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                            fetch_max_bytes=MAX_MESSAGE_BYTES)


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Stop `consumer`. aiokafka 0.14 can raise CancelledError out of `stop()` when it
    is stopped soon after it started (its offset-reset task is cancelled): that one is
    not ours to pass on, unless this task is itself being cancelled."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def resolve(consumer: AIOKafkaConsumer, topic: str, spec: Range) -> list[Span]:
    """The offsets `spec` stands for in each partition of `topic` (its full name), now;
    raises ExportError for a topic or partition that does not exist."""
    await consumer._client.force_metadata_update()  # every topic: none is subscribed yet
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise ExportError(f"topic {topic} does not exist (is HEADWATER_TOPIC_PREFIX right?)")
    wanted = sorted(set(spec.partitions)) if spec.partitions is not None else sorted(parts)
    if missing := [p for p in wanted if p not in parts]:
        raise ExportError(f"partition {missing[0]} of {topic} does not exist "
                          f"({len(parts)} partitions: 0..{max(parts)})")
    tps = [TopicPartition(topic, p) for p in wanted]
    first = await consumer.beginning_offsets(tps)
    last = await consumer.end_offsets(tps)

    async def at(t: int | None, o: int | None, default: dict[TopicPartition, int]
                 ) -> dict[TopicPartition, int]:
        if o is not None:
            return {tp: o for tp in tps}
        if t is None:
            return dict(default)
        found = await consumer.offsets_for_times({tp: t for tp in tps})
        return {tp: last[tp] if found.get(tp) is None else found[tp].offset for tp in tps}

    starts = await at(spec.start_time, spec.start_offset, first)
    ends = await at(spec.end_time, spec.end_offset, last)
    spans = []
    for tp in tps:
        end = min(ends[tp], last[tp])
        start = min(max(starts[tp], first[tp]), end)
        spans.append(Span(tp.partition, start, end))
    return spans


async def read_chunks(settings: Settings, name: str, spans: Sequence[Span], *,
                      consumer: AIOKafkaConsumer | None = None, idle_s: float = 60.0
                      ) -> AsyncGenerator[Chunk, None]:
    """Decoded chunks of `spans` of topic `name` (before the prefix), partition by
    partition in offset order (partitions interleave as the broker answers)."""
    topic = settings.topic(name)
    decode = decoder(name)
    own = consumer is None
    c = _consumer(settings) if consumer is None else consumer
    if own:
        await c.start()
    try:
        todo = {TopicPartition(topic, s.partition): s for s in spans if s.start < s.end}
        if not todo:
            return
        c.assign(list(todo))
        for tp, s in todo.items():
            c.seek(tp, s.start)
        seen = time.monotonic()
        skips: dict[tuple[TopicPartition, int], int] = {}
        while todo:
            polled = await c.getmany(*todo, timeout_ms=500)
            if polled:
                seen = time.monotonic()
            elif time.monotonic() - seen > idle_s:
                raise ExportError(f"no messages from {topic} for {idle_s:.0f}s with "
                                  f"{len(todo)} partitions unfinished")
            for tp in list(todo):
                span = todo[tp]  # span.start: the next offset this partition owes
                records = [r for r in polled.get(tp, ()) if span.start <= r.offset < span.end]
                position = await c.position(tp)
                first = records[0].offset if records else min(position, span.end)
                if first > span.start and skips.get((tp, span.start), 0) < MAX_SKIP_CHECKS:
                    # offsets passed over without a record: transaction markers, a
                    # compacted log, or a position that moved without returning records
                    # (seen once, at a partition's end right after the seek, on a test
                    # broker another session was restarting): read them again before
                    # counting them as read
                    skips[tp, span.start] = skips.get((tp, span.start), 0) + 1
                    c.seek(tp, span.start)
                    continue
                done = max(position, records[-1].offset + 1 if records else 0) >= span.end
                if not records and not done:
                    if position > span.start:
                        todo[tp] = Span(tp.partition, min(position, span.end), span.end)
                        yield Chunk(tp.partition, None, None, todo[tp].start)
                    continue
                nxt = span.end if done else records[-1].offset + 1
                rows, rejected = decode(topic, tp.partition, records) if records else (None, None)
                if done:
                    del todo[tp]
                    c.pause(tp)
                else:
                    todo[tp] = Span(tp.partition, nxt, span.end)
                yield Chunk(tp.partition, rows, rejected, nxt)
    finally:
        if own:
            await _stop(c)


def read_range(settings: Settings, name: str, spec: Range, *,
               rejected: Callable[[pa.Table], object] | None = None) -> Iterator[pa.Table]:
    """The decoded rows of `spec` in topic `name` (before the prefix), one table per poll
    and partition, each partition in offset order: what replay reads instead of Parquet.
    Messages that do not decode go to `rejected` (a `REJECTED` table per poll) when
    given. Synchronous: it runs its own event loop (use `read_chunks` from async code)."""
    loop = asyncio.new_event_loop()
    consumers: list[AIOKafkaConsumer] = []

    async def start() -> AsyncGenerator[Chunk, None]:
        consumers.append(c := _consumer(settings))  # aiokafka wants the running loop
        await c.start()
        spans = await resolve(c, settings.topic(name), spec)
        return read_chunks(settings, name, spans, consumer=c)

    chunks: AsyncGenerator[Chunk, None] | None = None
    try:
        chunks = loop.run_until_complete(start())
        while True:
            try:
                chunk = loop.run_until_complete(anext(chunks))
            except StopAsyncIteration:
                break
            if rejected is not None and chunk.rejected is not None:
                rejected(chunk.rejected)
            if chunk.rows is not None and chunk.rows.num_rows:
                yield chunk.rows
    finally:
        if chunks is not None:
            loop.run_until_complete(chunks.aclose())
        for c in consumers:
            loop.run_until_complete(_stop(c))
        loop.close()


# -- decoding -----------------------------------------------------------------------

Decoded = tuple[pa.Table | None, pa.Table | None]
Decoder = Callable[[str, int, Sequence[Any]], Decoded]


class _Messages:
    """One partition's records of a poll, as coordinate columns (built once)."""

    def __init__(self, topic: str, partition: int, records: Sequence[Any]) -> None:
        self.records = records
        n = len(records)
        self.offsets = np.fromiter((r.offset for r in records), np.int64, n)
        self.timestamps = np.fromiter((-1 if r.timestamp is None else r.timestamp
                                       for r in records), np.int64, n)
        self.keys = pa.array([r.key for r in records], pa.binary())
        distinct: dict[Any, int] = {}
        index = np.fromiter((distinct.setdefault(tuple(r.headers or ()), len(distinct))
                             for r in records), np.int32, n)
        unique = pa.array([[{"key": k, "value": v} for k, v in h] for h in distinct],
                          HEADERS_TYPE)
        self.headers = unique.take(pa.array(index))
        self.topic, self.partition = topic, partition

    def coordinates(self, idx: np.ndarray) -> list[pa.Array]:
        """The coordinate columns of the rows that came from messages `idx`."""
        take = pa.array(idx, pa.int64())
        n = len(idx)
        return [pa.array([self.topic] * n, pa.string()),
                pa.array(np.full(n, self.partition, np.int32)),
                pa.array(self.offsets[idx]), pa.array(self.timestamps[idx]),
                self.keys.take(take), self.headers.take(take)]

    def rows(self, table: pa.Table | pa.RecordBatch, idx: np.ndarray) -> pa.Table:
        out = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table
        for f, col in zip(COORDINATES, self.coordinates(idx), strict=True):
            out = out.append_column(f, col)
        return out

    def rejected(self, bad: Sequence[tuple[int, Rejected]]) -> pa.Table | None:
        if not bad:
            return None
        idx = np.array([i for i, _ in bad], np.int64)
        cols = self.coordinates(idx) + [
            pa.array([r.reason for _, r in bad], pa.string()),
            pa.array([r.detail for _, r in bad], pa.string()),
            pa.array([r.row for _, r in bad], pa.int64()),
            pa.array([self.records[i].value for i, _ in bad], pa.binary())]
        return pa.Table.from_arrays(cols, schema=REJECTED)


def _builder_decoder(make: Callable[[int], Any]) -> Decoder:
    """Input topics, decoded by ingest's batch builder of the topic: every output row's
    `source_offset` is the offset of its message."""

    def decode(topic: str, partition: int, records: Sequence[Any]) -> Decoded:
        m = _Messages(topic, partition, records)
        builder = make(partition)
        try:
            bad = builder.add_records(records, 0)
        except Exception:  # a codec bug: one by one, as ingest does
            builder, bad = make(partition), []
            for i, rec in enumerate(records):
                try:
                    bad += [(i, r) for _, r in builder.add_records([rec], 0)]
                except Exception as exc:
                    bad.append((i, Rejected("decode-error", repr(exc)[:300])))
        batch = builder.build()
        table = pa.Table.from_batches([batch])
        idx = np.searchsorted(m.offsets, table.column("source_offset").to_numpy())
        i = table.schema.get_field_index("ingest_time")  # when ingest would have read it
        table = table.set_column(i, "ingest_time", pa.array(m.timestamps[idx]))
        return m.rows(table, idx), m.rejected(bad)

    return decode


def _batch_decoder(open_batch: Callable[[bytes | None, int, int | None, int], Any]
                   ) -> Decoder:
    """Arrow batch topics, opened as featurize opens them (metadata the batch lacks comes
    from the message; `ingest_time` from its Kafka timestamp)."""

    def decode(topic: str, partition: int, records: Sequence[Any]) -> Decoded:
        m = _Messages(topic, partition, records)
        tables: list[pa.Table] = []
        bad: list[tuple[int, Rejected]] = []
        for i, r in enumerate(records):
            t = int(m.timestamps[i])
            got = open_batch(r.value, r.offset, r.timestamp, t)
            if isinstance(got, Rejected):
                bad.append((i, got))
                continue
            batch, rows_bad = got
            bad += [(i, x) for x in rows_bad]
            if batch.num_rows:
                tables.append(m.rows(batch, np.full(batch.num_rows, i, np.int64)))
        return _concat(tables), m.rejected(bad)

    return decode


def _generic_decode(topic: str, partition: int, records: Sequence[Any]) -> Decoded:
    """Any other topic: a row per JSON object, or per row of an Arrow batch."""
    m = _Messages(topic, partition, records)
    tables: list[pa.Table] = []
    bad: list[tuple[int, Rejected]] = []
    docs: list[dict[str, Any]] = []
    doc_idx: list[int] = []

    def flush_docs() -> None:
        if not docs:
            return
        try:
            tables.append(m.rows(pa.Table.from_pylist(docs), np.array(doc_idx, np.int64)))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # mixed types: row by row
            for d, i in zip(docs, doc_idx, strict=True):
                try:
                    one = m.rows(pa.Table.from_pylist([d]), np.array([i], np.int64))
                    _concat([*tables, one])
                    tables.append(one)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    bad.append((i, Rejected("wrong-type", str(exc)[:300])))
        docs.clear()
        doc_idx.clear()

    for i, r in enumerate(records):
        ctype = header(r.headers or (), "content-type")
        if not r.value:
            bad.append((i, Rejected("empty-value", "message value is empty or null")))
        elif ctype == ARROW.encode():
            try:
                table = read_ipc(r.value)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
                bad.append((i, Rejected("bad-arrow", str(exc)[:300])))
                continue
            flush_docs()
            if table.num_rows:
                tables.append(m.rows(table, np.full(table.num_rows, i, np.int64)))
        elif ctype is not None and ctype != JSON.encode():
            bad.append((i, Rejected("unknown-content-type", ctype.decode(errors="replace"))))
        else:
            try:
                d = orjson.loads(r.value)
            except orjson.JSONDecodeError as exc:
                bad.append((i, Rejected("not-json", str(exc))))
                continue
            if not isinstance(d, dict):
                bad.append((i, Rejected("not-an-object", f"top level is {type(d).__name__}")))
                continue
            docs.append(d)
            doc_idx.append(i)
    flush_docs()
    return _concat(tables), m.rejected(sorted(bad, key=lambda b: b[0]))


def decoder(name: str) -> Decoder:
    """The decode path of topic `name` (before the prefix)."""
    if name == "sensor-events":
        return _builder_decoder(lambda _: SensorBatchBuilder())
    if name == "engagement-events":
        return _builder_decoder(lambda _: EngagementBatchBuilder())
    if name == "labels":
        return _builder_decoder(LabelBatchBuilder)
    if name == "sensor-batches":
        return _batch_decoder(sensor_batch)
    if name == "engagement-batches":
        return _batch_decoder(engagement_batch)
    return _generic_decode


def _concat(tables: Sequence[pa.Table]) -> pa.Table | None:
    """One table of `tables` (columns of all, nulls where one lacks a column), the
    event's columns first and the coordinates last."""
    if not tables:
        return None
    t = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    names = [n for n in t.schema.names if n not in COORDINATES.names] + COORDINATES.names
    return t.select(names)


# -- writing ------------------------------------------------------------------------

def _write(table: pa.Table, path: Path) -> None:
    """Write `table` to `path` through a hidden temporary file: a file under its final
    name is always whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(doc: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _date(day: int) -> str:
    return datetime.fromtimestamp(day * DAY_MS / 1000, UTC).date().isoformat()


def _write_rows(root: Path, partition: int, rows: pa.Table) -> int:
    """One file per UTC date of the rows' Kafka timestamps; returns how many."""
    days = np.floor_divide(rows.column("kafka_timestamp").to_numpy(), DAY_MS)
    offsets = rows.column("kafka_offset").to_numpy()
    written = 0
    for day in np.unique(days):
        mask = days == day
        first = int(offsets[mask].min())
        _write(rows.filter(pa.array(mask)),
               root / f"date={_date(int(day))}" / f"part-{partition}-{first}.parquet")
        written += 1
    return written


def _files(root: Path) -> list[tuple[int, int, Path]]:
    """(partition, first offset, path) of the data files under `root`, in that order."""
    found = []
    for path in root.glob("date=*/part-*.parquet"):
        if m := _PART.fullmatch(path.name):
            found.append((int(m[1]), int(m[2]), path))
    return sorted(found)


def _clean(root: Path, next_offsets: dict[int, int]) -> None:
    """Remove what an interrupted run left past the state: temporary files, and files of
    a partition from its next offset on (written, but not yet recorded)."""
    for tmp in root.glob("**/.*.tmp"):
        tmp.unlink()
    for path in [*root.glob("date=*/part-*.parquet"), *(root / REJECTED_DIR).glob("part-*")]:
        m = _PART.fullmatch(path.name)
        if m and int(m[2]) >= next_offsets.get(int(m[1]), 1 << 62):
            path.unlink()


async def export_range(settings: Settings, name: str, spec: Range, out: Path, *,
                       rows_per_file: int = 500_000, limit: int | None = None,
                       progress: Callable[[int], object] | None = None,
                       on_start: Callable[[Summary], object] | None = None) -> Summary:
    """Write the range `spec` of topic `name` (before the prefix) under `out / name`, or
    go on with an interrupted export of the same range there.

    Nothing is written until the range is known to be good (topic, partitions, at least
    one message). A partition's rows are written when `rows_per_file` rows (or rejected
    messages) are waiting, and when it is done; `limit` stops after about that many
    messages (this run), with every message read written and recorded. `progress` gets
    the messages covered since its last call; `on_start` the summary before reading.
    """
    topic = settings.topic(name)
    root = out / name
    state_path = root / STATE_FILE
    c = _consumer(settings)
    await c.start()
    try:
        state: dict[str, Any] | None = None
        if state_path.exists():
            state = orjson.loads(state_path.read_bytes())
            if state.get("topic") != topic or state.get("range") != spec.to_dict():
                raise ExportError(f"{root} holds an export of another range "
                                  f"({state.get('topic')} {state.get('range')}, not {topic} "
                                  f"{spec.to_dict()}): choose another --out")
            spans = [Span(int(p), v["start"], v["end"]) for p, v in state["partitions"].items()]
            nexts = {int(p): v["next"] for p, v in state["partitions"].items()}
        else:
            spans = await resolve(c, topic, spec)
            nexts = {s.partition: s.start for s in spans}
            if root.exists() and any(root.iterdir()):
                raise ExportError(f"{root} exists and holds no export state: choose another "
                                  "--out, or remove it")
            if sum(s.end - s.start for s in spans) == 0:
                raise ExportError(f"no messages in range: {_describe(topic, spans, spec)}")
        summary = Summary(topic, root, spans=spans,
                          total=sum(s.end - s.start for s in spans))
        if state is not None:
            summary.rows, summary.rejected = state["rows"], state["rejected"]
            summary.files = state.get("files", 0)
            summary.messages = sum(nexts[s.partition] - s.start for s in spans)
            if state.get("complete"):
                summary.complete = summary.already = True
                return summary
            _clean(root, nexts)
        root.mkdir(parents=True, exist_ok=True)

        def save(complete: bool) -> None:
            _write_json({"topic": topic, "name": name, "range": spec.to_dict(),
                         "partitions": {str(s.partition): {"start": s.start, "end": s.end,
                                                           "next": nexts[s.partition]}
                                        for s in spans},
                         "rows": summary.rows, "rejected": summary.rejected,
                         "files": summary.files, "complete": complete}, state_path)

        if state is None:
            save(False)
        if on_start is not None:
            on_start(summary)
        rows: dict[int, list[pa.Table]] = {s.partition: [] for s in spans}
        bad: dict[int, list[pa.Table]] = {s.partition: [] for s in spans}
        waiting: dict[int, int] = dict.fromkeys(rows, 0)
        read: dict[int, int] = dict(nexts)  # offsets read, written or not

        def flush(p: int) -> None:
            if rows[p]:
                try:
                    tables = [_concat(rows[p])]
                except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column changed type
                    tables = rows[p]  # (JSON of another shape): a file per poll
                for table in tables:
                    assert table is not None
                    summary.files += _write_rows(root, p, table)
                    summary.rows += table.num_rows
            if bad[p]:
                rejected = pa.concat_tables(bad[p])
                first = rejected.column("kafka_offset")[0].as_py()
                _write(rejected, root / REJECTED_DIR / f"part-{p}-{first}.parquet")
                summary.rejected += rejected.num_rows
            rows[p], bad[p], waiting[p] = [], [], 0
            nexts[p] = read[p]
            save(all(nexts[s.partition] >= s.end for s in spans))

        todo = [Span(s.partition, nexts[s.partition], s.end) for s in spans]
        this_run = 0
        chunks = read_chunks(settings, name, todo, consumer=c)
        async for chunk in chunks:
            p = chunk.partition
            if chunk.rows is not None and chunk.rows.num_rows:
                rows[p].append(chunk.rows)
                waiting[p] += chunk.rows.num_rows
            if chunk.rejected is not None:
                bad[p].append(chunk.rejected)
                waiting[p] += chunk.rejected.num_rows
            step = chunk.next_offset - read[p]
            read[p] = chunk.next_offset
            this_run += step
            summary.messages += step
            if progress is not None:
                progress(step)
            end = next(s.end for s in spans if s.partition == p)
            if waiting[p] >= rows_per_file or read[p] >= end:
                flush(p)
            if limit is not None and this_run >= limit:
                break
        await chunks.aclose()
        for s in spans:
            if read[s.partition] != nexts[s.partition]:
                flush(s.partition)
        summary.complete = all(nexts[s.partition] >= s.end for s in spans)
        save(summary.complete)
        return summary
    finally:
        await _stop(c)


def _describe(topic: str, spans: Sequence[Span], spec: Range) -> str:
    bounds = []
    for what, o, t in (("from", spec.start_offset, spec.start_time),
                       ("to", spec.end_offset, spec.end_time)):
        if o is not None:
            bounds.append(f"{what} offset {o}")
        elif t is not None:
            bounds.append(f"{what} {datetime.fromtimestamp(t / 1000, UTC).isoformat()}")
    parts = ", ".join(f"{s.partition}" for s in spans)
    return f"{topic} partitions {parts}" + (f" {' '.join(bounds)}" if bounds else "")


# -- reading an export back ---------------------------------------------------------

def read_export(path: Path | str, *, partial: bool = False) -> pa.Table:
    """Every row of an export (`OUT/<topic>`) in Kafka's order: by partition, offset and
    row within the message. Raises ExportError when the export is not complete, unless
    `partial`. Files whose columns differ are combined (nulls where a file lacks one)."""
    root = Path(path)
    state_path = root / STATE_FILE
    if not state_path.exists():
        raise ExportError(f"{root} is not an export (no {STATE_FILE})")
    state = orjson.loads(state_path.read_bytes())
    if not state.get("complete") and not partial:
        raise ExportError(f"the export in {root} is not complete: run it again to finish it")
    tables = [pq.read_table(p) for _, _, p in _files(root)]
    if not tables:
        return pa.Table.from_pylist([], schema=COORDINATES)
    try:
        table = _concat(tables)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ExportError(f"the files of {root} do not share a schema ({exc}): read them "
                          "one by one") from None
    assert table is not None
    # sort_indices is stable: the rows of one message keep their order
    return table.take(pc.sort_indices(table, [("kafka_partition", "ascending"),
                                              ("kafka_offset", "ascending")]))
