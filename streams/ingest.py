"""ingest: raw events in, validated Arrow batches out, bad messages to dead-letters.

Reads `sensor-events` and `engagement-events` with one aiokafka consumer in batches
(`getmany`), decodes with our own codecs, and writes one Arrow IPC message per source
partition and poll to `sensor-batches` or `engagement-batches`, partition p to
partition p. Source offsets are committed only after every batch and dead letter of the
poll is acknowledged by the broker (at-least-once: a crash between the two replays the
poll). Polls are pipelined: a committer task waits for each poll's
deliveries and commits its offsets, in order, while the next polls are decoded; at most
`MAX_IN_FLIGHT` polls are outstanding, and a rebalance waits for them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from mode import Service

from schemas.codec import Record, Rejected, SensorBatchBuilder
from schemas.engagement_codec import EngagementBatchBuilder
from schemas.events import ARROW, headers
from schemas.label_codec import LabelBatchBuilder
from streams.metrics import BATCH_ROWS, CONSUMER_LAG, EVENTS, STAGE_SECONDS
from streams.outbox import Outbox, now_ms
from streams.settings import Settings

__all__ = ["Ingest"]

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 4
Offsets = dict[TopicPartition, int]



class Builder(Protocol):
    """What ingest needs of a codec's batch builder."""

    def __len__(self) -> int: ...

    def add_records(self, records: Sequence[Record], ingest_time: int
                    ) -> list[tuple[int, Rejected]]: ...

    def build(self) -> pa.RecordBatch: ...


@dataclass(frozen=True)
class Route:
    """Where one input topic's events go, and how they are decoded."""

    target: str
    builder: Callable[[int], Builder]  # of the source partition
    headers: list[tuple[str, bytes]]
    partition: int | None = None  # of the target; None: the source partition


class Ingest(Service):
    """The ingest stage as a mode Service, started and stopped with the Faust worker."""

    def __init__(self, settings: Settings, outbox: Outbox) -> None:
        super().__init__()
        self.settings = settings
        self.outbox = outbox
        self.routes = {
            settings.topic("sensor-events"): Route(
                settings.topic("sensor-batches"), lambda _: SensorBatchBuilder(),
                headers(ARROW, "sensor-event.v1")),
            settings.topic("engagement-events"): Route(
                settings.topic("engagement-batches"), lambda _: EngagementBatchBuilder(),
                headers(ARROW, "engagement-event.v1")),
        }
        if settings.learn:  # labels go to the learner's single-partition training topic
            self.routes[settings.topic("labels")] = Route(
                settings.topic("training"), LabelBatchBuilder, headers(ARROW, "label.v1"),
                partition=0)
        self.group = f"{settings.app_id}-ingest"
        self.consumer: AIOKafkaConsumer | None = None
        self._in_flight: asyncio.Queue[tuple[list[asyncio.Future[object]], Offsets]] = \
            asyncio.Queue(MAX_IN_FLIGHT)

    async def on_start(self) -> None:
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            **s.kafka_options(),
            group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(s.session_timeout_ms // 5, 500),
            max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=16 * 1024 * 1024)
        self.consumer.subscribe(list(self.routes), listener=_DrainOnRevoke(self._in_flight))
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.consumer is not None:
            try:  # commit what was sent; what is not acknowledged in time is replayed
                await asyncio.wait_for(self._in_flight.join(), 30)
            except TimeoutError:
                log.warning("ingest: stopped with unacknowledged batches; they will be replayed")
            await self.consumer.stop()

    @Service.task
    async def _commit(self) -> None:
        """Commit each poll's offsets once all its messages are acknowledged, in order."""
        assert self.consumer is not None
        while True:  # cancelled when the service stops, after on_stop has drained the queue
            futures, offsets = await self._in_flight.get()
            try:
                if futures:
                    await asyncio.gather(*futures)
                await self.consumer.commit(offsets)
            finally:
                self._in_flight.task_done()

    @Service.task
    async def _run(self) -> None:
        assert self.consumer is not None
        wait = self.settings.ingest_max_wait_ms
        while not self.should_stop:
            polled = await self.consumer.getmany(timeout_ms=wait,
                                                 max_records=self.settings.ingest_max_records)
            if polled:
                await self.handle(polled)

    def assigned(self) -> list[TopicPartition]:
        """The input partitions this worker's ingest holds now."""
        return sorted(self.consumer.assignment()) if self.consumer is not None else []

    async def handle(self, polled: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
                     ) -> None:
        """Decode, send and commit one poll's messages."""
        assert self.consumer is not None
        started = time.perf_counter()
        pending: list[asyncio.Future[object]] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, records in polled.items():
            route = self.routes[tp.topic]
            builder = route.builder(tp.partition)
            ingest_time = now_ms()
            decoding = time.perf_counter()
            try:
                rejected = builder.add_records(records, ingest_time)
            except Exception:  # a codec bug must not stop the stream: go one by one
                log.exception("ingest: decoding a poll failed; retrying message by message")
                builder, rejected = route.builder(tp.partition), []
                for i, rec in enumerate(records):
                    try:
                        rejected += [(i, r) for _, r in builder.add_records([rec], ingest_time)]
                    except Exception as exc:
                        rejected.append((i, Rejected("decode-error", repr(exc)[:300])))
            STAGE_SECONDS.labels("decode").observe(time.perf_counter() - decoding)
            for i, r in rejected:
                rec = records[i]
                pending.append(await self.outbox.dead_letter(
                    "ingest", r, topic=tp.topic, partition=tp.partition, offset=rec.offset,
                    key=rec.key, raw=rec.value))
            if len(builder):
                batch = builder.build()
                pending += await self.outbox.send_table(
                    route.target, batch,
                    partition=tp.partition if route.partition is None else route.partition,
                    headers=route.headers)
                EVENTS.labels("ingest").inc(batch.num_rows)
                BATCH_ROWS.labels("ingest").observe(batch.num_rows)
            offsets[tp] = records[-1].offset + 1
            high = self.consumer.highwater(tp)
            if high is not None:
                CONSUMER_LAG.labels(self.group, tp.topic, str(tp.partition)).set(
                    max(0, high - offsets[tp]))
        STAGE_SECONDS.labels("ingest").observe(time.perf_counter() - started)
        await self._in_flight.put((pending, offsets))  # waits while MAX_IN_FLIGHT are out


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another worker, commit everything already sent."""

    def __init__(self, in_flight: asyncio.Queue[tuple[list[asyncio.Future[object]], Offsets]]
                 ) -> None:
        self.in_flight = in_flight

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.in_flight.join()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("ingest: assigned %s", ", ".join(f"{tp.topic}:{tp.partition}"
                                                  for tp in sorted(assigned)) or "nothing")
