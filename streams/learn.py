"""learn: the online heads, one writer per model (DESIGN.md §3).

Everything a head learns from flows through the single-partition `training` topic:
infer writes each scored batch's rows there as questions (features as the deep model
saw them, and its score), ingest writes the labels it reads from `labels`, and the
learner itself writes a flush marker when the stream has been idle. The learner is a
consumer group of one partition, so exactly one worker learns at a time and another
takes over when it leaves.

What a head does depends only on the training topic's content, in order: the learner
checkpoints its heads and the offset they have read to the compacted `checkpoints`
topic, and a learner that takes over (after a crash, say) restores the latest
checkpoint and reads on from its offset, ending in the same state as one that never
stopped. Snapshots of each head's learner go to `model-updates` every
`learn_snapshot_updates` labels or `learn_snapshot_s` seconds, for infer to serve;
prequential metrics go to `metrics` and Prometheus, drift alerts to `alerts`, labels
that cannot be learned to `dead-letters` (with their source coordinates).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import pickle
import time
import zlib
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from mode import Service

from models.head import Head, Outcome, Row
from models.trainer import Trainer
from schemas.codec import Rejected, header, read_ipc
from schemas.events import ARROW, JSON, DriftAlert, HeadSnapshot, MetricsReport, headers
from streams.metrics import (
    CONSUMER_LAG,
    DRIFT_ALERTS,
    HEAD_LABELS,
    HEAD_METRIC,
    HEAD_VERSION,
    STAGE_SECONDS,
)
from streams.outbox import Outbox, now_ms
from streams.settings import Settings
from streams.topics import MAX_MESSAGE_BYTES, latest_by_key

__all__ = ["LABEL_BATCH_HEADERS", "Learn", "add_label", "add_questions", "head_name",
           "label_model"]

log = logging.getLogger(__name__)

LABEL_BATCH_HEADERS = headers(ARROW, "label.v1")
FLUSH_HEADERS = headers(JSON, "learn-flush.v1")
# v3: a pending label carries its weight; v2 (heads keep their metrics in
# `models.scores`) and v1 (river's metric objects) are not read, so a learner upgraded
# over older checkpoints relearns from the training topic
CHECKPOINT_HEADERS = headers("application/octet-stream", "learn-checkpoint.v3")
STEP = 256  # questions and labels a head takes before the learner yields the event loop
QUESTION = b"head-question.v1"
LABELS = b"label.v1"
FLUSH = b"learn-flush.v1"
CHECKPOINT = b"learn-checkpoint.v3"


def add_questions(trainer: Trainer, t: pa.Table) -> list[str]:
    """Hand a question table (`streams.infer.questions`) to `trainer`, row by row, as
    the learn stage does (features as float64 `Row`s); the event ids. Replay calls it
    too, so both feed a head the same numbers."""
    names = tuple(n for n in t.schema.names if n not in ("event_id", "entity_id", "event_time"))
    ids: list[str] = t.column("event_id").to_pylist()
    entities = t.column("entity_id").to_pylist()
    times = t.column("event_time").to_pylist()
    x = np.column_stack([t.column(n).to_numpy().astype(np.float64) for n in names])
    trainer.names = names
    for i, event_id in enumerate(ids):
        trainer.question(times[i], event_id, Row(names, x[i]), entities[i] or "")
    return ids


def keep_newest(owner: dict[str, str], most: int) -> dict[str, str]:
    """`owner` if it holds at most `most` ids, else a new dict of its newest 3/4 `most`.

    Rebuilt rather than trimmed in place: popping a dict's first key again and again
    scans the deleted slots before it each time, and once past `most` ids every batch
    did that; the worker then spent most of its time here and missed its heartbeats
    (tests/test_overload.py found it).

    >>> keep_newest({str(i): "m" for i in range(10)}, 8) == {str(i): "m" for i in range(4, 10)}
    True
    >>> d = {"a": "m"}
    >>> keep_newest(d, 8) is d
    True
    """
    if len(owner) <= most:
        return owner
    keep = most * 3 // 4
    return dict(itertools.islice(owner.items(), len(owner) - keep, None))


def label_model(row: dict[str, Any], owner: dict[str, str], default: str) -> str:
    """The model whose head learns label `row`: the one it names, else the one that
    asked its event (`owner`), else `default`."""
    model: str = row["model"] or owner.get(row["event_id"], default)
    return model


def add_label(trainer: Trainer, row: dict[str, Any], where: Any = None) -> None:
    """One label row (label.v1 as ingest decodes it) to `trainer`, due at its label time."""
    trainer.label(row["label_time"], row["event_id"], row["value"], row["source"], where,
                  row.get("weight") or 1)


def head_name(model: str) -> str:
    """The online head on top of deep model `model`.

    >>> head_name("shuttle")
    'shuttle-head'
    """
    return f"{model}-head"


class Learn(Service):
    """The learn stage as a mode Service, started with the worker (see the module doc)."""

    def __init__(self, settings: Settings, outbox: Outbox, models: dict[str, str]) -> None:
        """`models`: deep model name -> its feature-set family, one head each."""
        super().__init__()
        self.settings = settings
        self.outbox = outbox
        self.models = models
        self.group = f"{settings.app_id}-learn"
        self.tp = TopicPartition(settings.topic("training"), 0)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.trainers: dict[str, Trainer] | None = None  # None: not the learner now
        self.offset = 0  # the next training offset the trainers have not read
        self.owner: dict[str, str] = {}  # event id -> model, for labels that name none
        self._published: dict[str, int] = {}
        self._last_snapshot = self._last_report = self._last_checkpoint = time.monotonic()
        self._idle_since = time.monotonic()
        self._flush_pending = False
        self._assigned = False  # partition 0 is ours; the trainers may not be restored yet
        self._checkpointed = -1
        self._counted: dict[str, dict[str, int]] = {}
        self._reported: dict[str, tuple[int, int]] = {}

    async def on_start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(**s.kafka_options(), acks="all",
                                         enable_idempotence=True, linger_ms=5,
                                         max_request_size=MAX_MESSAGE_BYTES,
                                         compression_type=None)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            **s.kafka_options(), group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(s.session_timeout_ms // 5, 500),
            max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
        self.consumer.subscribe([self.tp.topic], listener=_Handover(self))
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.trainers is not None:
            await self.checkpoint()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    # -- taking over and handing over -----------------------------------------------

    async def take_over(self) -> None:
        """Restore the latest checkpoint (or start fresh) and read on from its offset."""
        assert self.consumer is not None
        raw = (await latest_by_key(self.settings, "checkpoints", CHECKPOINT)
               ).get(self.settings.app_id.encode())
        if raw is None:
            self.trainers = {m: self._fresh(m, fam) for m, fam in self.models.items()}
            self.offset = (await self.consumer.beginning_offsets([self.tp]))[self.tp]
            log.info("learn: started fresh heads for %s", ", ".join(self.models))
        else:
            state = pickle.loads(zlib.decompress(raw))
            self.trainers, self.offset, self.owner = (state["trainers"], state["offset"],
                                                      state["owner"])
            for m, fam in self.models.items():  # a model added since the checkpoint
                self.trainers.setdefault(m, self._fresh(m, fam))
            log.info("learn: restored heads at training offset %d (%s)", self.offset,
                     ", ".join(f"{head_name(m)} v{t.head.updates}"
                               for m, t in self.trainers.items()))
        for m in self.trainers:
            DRIFT_ALERTS.labels(head_name(m))  # exported at 0 before the first alert
        self._checkpointed = self.offset
        self.consumer.seek(self.tp, self.offset)
        self.consumer.resume(self.tp)

    async def hand_over(self) -> None:
        if self.trainers is not None:
            await self.checkpoint()
        self.trainers = None
        self._assigned = False

    def _fresh(self, model: str, fam: str) -> Trainer:
        return Trainer(Head(head_name(model), self.settings.head_config(fam)),
                       self.settings.learn_max_buffer)

    async def checkpoint(self) -> None:
        """Write the heads and the offset they have read (skipped when nothing moved)."""
        if self.trainers is None or self.offset == self._checkpointed:
            return
        assert self.producer is not None
        started = time.perf_counter()
        # pickled here, where nothing moves (the kept events packed: a few hundredths of a
        # second for 100,000); compressed in a thread, which zlib lets the loop run beside
        offset = self.offset
        state = pickle.dumps({"trainers": self.trainers, "offset": offset,
                              "owner": self.owner}, protocol=5)
        raw = await asyncio.to_thread(zlib.compress, state, 1)
        try:
            await self.producer.send_and_wait(self.settings.topic("checkpoints"), raw,
                                              key=self.settings.app_id.encode(),
                                              headers=CHECKPOINT_HEADERS)
        except Exception as exc:  # the previous checkpoint still holds: replay is longer
            log.error("learn: checkpoint of %d bytes not written: %r", len(raw), exc)
            return
        self._checkpointed = offset
        assert self.consumer is not None
        await self.consumer.commit({self.tp: offset})
        STAGE_SECONDS.labels("learn-checkpoint").observe(time.perf_counter() - started)

    # -- the loop --------------------------------------------------------------------

    @Service.task
    async def _run(self) -> None:
        assert self.consumer is not None
        while not self.should_stop:
            polled = await self.consumer.getmany(timeout_ms=200, max_records=256)
            if self._assigned and self.trainers is None:
                await self.take_over()  # here, not in the listener: see _Handover
                continue
            if self.trainers is None:
                continue
            records = [r for r in polled.get(self.tp, []) if r.offset >= self.offset]
            if records:
                started = time.perf_counter()
                for r in records:
                    await self.handle(r)
                STAGE_SECONDS.labels("learn").observe(time.perf_counter() - started)
                self._idle_since = time.monotonic()
                high = self.consumer.highwater(self.tp) \
                    if self.tp in self.consumer.assignment() else None  # revoked meanwhile
                if high is not None:
                    CONSUMER_LAG.labels(self.group, self.tp.topic, "0").set(
                        max(0, high - self.offset))
            elif time.monotonic() - self._idle_since > self.settings.learn_idle_flush_ms / 1000:
                await self._ask_flush()
            await self._cadence()

    async def handle(self, record: Any) -> None:
        """One training message: questions, labels or a flush marker."""
        assert self.trainers is not None
        kind = header(record.headers, "schema")
        outcomes: list[tuple[str, Outcome]] = []
        try:
            if kind == QUESTION:
                self._questions(read_ipc(record.value))
            elif kind == LABELS:
                await self._labels(read_ipc(record.value))
            elif kind == FLUSH:
                self._flush_pending = False
                for m, trainer in self.trainers.items():
                    outcomes += [(m, o) for o in trainer.flush()]
            else:
                log.warning("learn: skipped a training message with schema %r at offset %d",
                            kind, record.offset)
            for m, trainer in self.trainers.items():
                outcomes += [(m, o) for o in trainer.step(STEP)]
                while trainer.more:  # the worker's other agents share this event loop
                    await asyncio.sleep(0)
                    await self._snapshots()  # every N labels, even inside a burst
                    outcomes += [(m, o) for o in trainer.step(STEP)]
        except (pa.ArrowInvalid, OSError, KeyError) as exc:  # never crash the learner
            await self.outbox.dead_letter(
                "learn", Rejected("bad-training-message", repr(exc)[:300]),
                topic=record.topic, partition=record.partition, offset=record.offset,
                key=record.key, raw=record.value)
        if record.offset > self.offset:  # compaction or retention: say so, never silently
            log.warning("learn: training offsets %d..%d are gone; the heads skip them",
                        self.offset, record.offset - 1)
        self.offset = record.offset + 1
        for model, o in outcomes:
            await self._act(model, o)

    def _questions(self, t: pa.Table) -> None:
        assert self.trainers is not None
        meta = t.schema.metadata or {}
        model = meta.get(b"model", b"").decode()
        trainer = self.trainers.get(model)
        if trainer is None:
            return  # a deep model without a head here (learning switched off for it)
        owner = self.owner
        for event_id in add_questions(trainer, t):
            owner[event_id] = model
        self.owner = keep_newest(owner, 4 * self.settings.head_max_pending)

    async def _labels(self, t: pa.Table) -> None:
        """Each label to its head (the one its `model` names, else the one that asked its
        event, else the first); a label for a model with no head is dead-lettered."""
        assert self.trainers is not None
        default = next(iter(self.trainers))
        labels = self.settings.topic("labels")
        for row in t.to_pylist():
            where = (row["source_partition"], row["source_offset"])
            model = label_model(row, self.owner, default)
            trainer = self.trainers.get(model)
            if trainer is None:
                await self.outbox.dead_letter(
                    "learn", Rejected("unknown-model", f"no online head learns for model "
                                      f"{model!r}; heads: {', '.join(self.trainers)}"),
                    topic=labels, partition=where[0], offset=where[1],
                    key=row["event_id"].encode(), raw=orjson.dumps(row))
                continue
            add_label(trainer, row, where)

    async def _act(self, model: str, o: Outcome) -> None:
        name = head_name(model)
        if o.kind == "drift":
            DRIFT_ALERTS.labels(name).inc()
            alert = DriftAlert(name=name, model=model, detector=o.reason, event_id=o.event_id,
                               event_time=o.time, action=str(o.extra["action"]),
                               labels=int(o.extra["labels"]), rolling=o.extra["rolling"],
                               detected_at=now_ms(), slice=o.extra.get("slice") or None)
            assert self.producer is not None
            await self.producer.send(self.settings.topic("alerts"), alert.to_json(),
                                     key=name.encode(), headers=alert.headers())
            log.warning("learn: drift in %s at event %s (%s); action: %s", name, o.event_id,
                        o.reason, alert.action)
            return
        partition, offset = o.extra.get("where") or (0, 0)
        await self.outbox.dead_letter(
            "learn", Rejected(o.reason, o.detail), topic=self.settings.topic("labels"),
            partition=partition, offset=offset, key=o.event_id.encode(),
            raw=orjson.dumps({"event_id": o.event_id, "label_time": o.time}))

    async def _ask_flush(self) -> None:
        """Idle with questions or labels held: write a flush marker to the training
        topic, so that the release is part of the topic (and of any replay of it)."""
        assert self.trainers is not None and self.producer is not None
        if self._flush_pending or not any(len(t.order) for t in self.trainers.values()):
            return
        self._flush_pending = True
        await self.producer.send_and_wait(self.tp.topic, b"{}", partition=0,
                                          headers=FLUSH_HEADERS)

    async def _cadence(self) -> None:
        """Snapshots, metrics reports and checkpoints, each on its own clock."""
        assert self.trainers is not None
        s, now = self.settings, time.monotonic()
        await self._snapshots()
        if now - self._last_report > s.learn_report_s:
            self._last_report = now
            for model, trainer in self.trainers.items():
                seen = (trainer.head.updates, sum(trainer.head.counts.values()))
                if self._reported.get(model) != seen:  # nothing new: no report
                    self._reported[model] = seen
                    await self.report(model, trainer.head)
        if now - self._last_checkpoint > s.learn_checkpoint_s:
            self._last_checkpoint = now
            await self.checkpoint()

    async def _snapshots(self) -> None:
        """Publish each head that learned `learn_snapshot_updates` labels since its last
        snapshot, or any label when `learn_snapshot_s` has passed."""
        assert self.trainers is not None
        s, now = self.settings, time.monotonic()
        due = now - self._last_snapshot > s.learn_snapshot_s
        for model, trainer in self.trainers.items():
            moved = trainer.head.updates - self._published.get(model, 0)
            if moved and (due or moved >= s.learn_snapshot_updates):
                await self.publish(model, trainer)
        if due:
            self._last_snapshot = now

    async def publish(self, model: str, trainer: Trainer) -> None:
        """Send the head's learner to `model-updates` for infer to serve."""
        assert self.producer is not None
        head = trainer.head
        snap = HeadSnapshot(
            name=head.name, model=model, family=self.models[model],
            version=head.updates, spec=head.config.spec, features=list(trainer.names),
            state_b64=base64.b64encode(head.model_bytes()).decode(), created_at=now_ms(),
            training_offset=self.offset)
        await self.producer.send_and_wait(self.settings.topic("model-updates"), snap.to_json(),
                                          key=head.name.encode(), headers=snap.headers())
        self._published[model] = head.updates
        HEAD_VERSION.labels(head.name, "learned").set(head.updates)

    async def report(self, model: str, head: Head) -> None:
        """Metrics of a head to `metrics` and Prometheus."""
        cumulative, rolling = head.metrics(), head.metrics(rolling=True)
        for k, v in cumulative.items():
            HEAD_METRIC.labels(head.name, k, "cumulative").set(v)
        for k, v in rolling.items():
            HEAD_METRIC.labels(head.name, k, "rolling").set(v)
        seen = self._counted.setdefault(head.name, {})
        for k, v in head.counts.items():
            if v > seen.get(k, 0):
                HEAD_LABELS.labels(head.name, k).inc(v - seen.get(k, 0))
                seen[k] = v
        report = MetricsReport(
            name=head.name, model=model, version=head.updates,
            labels=int(head.counts["learned"]), window=head.config.rolling,
            cumulative=dict(cumulative), rolling=dict(rolling), counts=dict(head.counts),
            stream_time=max(head.clock, 0), report_time=now_ms())
        assert self.producer is not None
        await self.producer.send(self.settings.topic("metrics"), report.to_json(),
                                 key=head.name.encode(), headers=report.headers())


class _Handover(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partition 0 of `training` assigned: this worker learns; revoked: it stops.

    On assignment the partition is paused and the learn loop restores the checkpoint
    and seeks: the fetcher starts on a new assignment before this listener returns, and
    records fetched meanwhile were handled out of turn (a learner once saw offset 1,
    then 0, then 1 again)."""

    def __init__(self, learn: Learn) -> None:
        self.learn = learn

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if self.learn.tp in revoked:
            await self.learn.hand_over()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.learn.tp in assigned and self.learn.consumer is not None:
            self.learn.consumer.pause(self.learn.tp)
            self.learn._assigned = True  # noqa: SLF001
