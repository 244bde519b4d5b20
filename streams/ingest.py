"""ingest: raw sensor events in, validated Arrow batches out, bad messages to dead-letters.

Reads `sensor-events` with aiokafka in batches (`getmany`), decodes with our own codec,
and writes one Arrow IPC message per source partition and poll to `sensor-batches`,
partition p to partition p. Source offsets are committed only after every batch and
dead letter of the poll is acknowledged by the broker (at-least-once: a crash between
the two replays the poll).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from mode import Service

from schemas.codec import Rejected, SensorBatchBuilder, write_ipc
from schemas.events import ARROW
from streams.metrics import BATCH_ROWS, EVENTS, STAGE_SECONDS
from streams.outbox import Outbox, now_ms
from streams.settings import Settings

__all__ = ["Ingest"]

log = logging.getLogger(__name__)

BATCH_HEADERS = [("content-type", ARROW.encode()), ("schema", b"sensor-event.v1")]


class Ingest(Service):
    """The ingest stage as a mode Service, started and stopped with the Faust worker."""

    def __init__(self, settings: Settings, outbox: Outbox) -> None:
        super().__init__()
        self.settings = settings
        self.outbox = outbox
        self.source = settings.topic("sensor-events")
        self.target = settings.topic("sensor-batches")
        self.consumer: AIOKafkaConsumer | None = None
        self.events = 0

    async def on_start(self) -> None:
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            self.source, **s.kafka_options(),  # type: ignore[arg-type]
            group_id=f"{s.app_id}-ingest", enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(s.session_timeout_ms // 5, 500),
            max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=16 * 1024 * 1024)
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    @Service.task
    async def _run(self) -> None:
        assert self.consumer is not None
        wait = self.settings.ingest_max_wait_ms
        while not self.should_stop:
            polled = await self.consumer.getmany(timeout_ms=wait,
                                                 max_records=self.settings.ingest_max_records)
            if polled:
                await self.handle(polled)

    async def handle(self, polled: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
                     ) -> None:
        """Decode, send and commit one poll's messages."""
        assert self.consumer is not None
        started = time.perf_counter()
        pending: list[asyncio.Future[object]] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, records in polled.items():
            builder = SensorBatchBuilder()
            ingest_time = now_ms()
            for rec in records:
                try:
                    bad = builder.add(rec.value, rec.headers, rec.offset, rec.timestamp,
                                      ingest_time)
                except Exception as exc:  # a codec bug must not stop the stream
                    bad = Rejected("decode-error", repr(exc)[:300])
                for r in ([bad] if isinstance(bad, Rejected) else bad or []):
                    pending.append(await self.outbox.dead_letter(
                        "ingest", r, topic=tp.topic, partition=tp.partition,
                        offset=rec.offset, key=rec.key, raw=rec.value))
            if len(builder):
                batch = builder.build()
                pending.append(await self.outbox.send(
                    self.target, write_ipc(batch), partition=tp.partition,
                    headers=BATCH_HEADERS))
                EVENTS.labels("ingest").inc(batch.num_rows)
                BATCH_ROWS.labels("ingest").observe(batch.num_rows)
                self.events += batch.num_rows
            offsets[tp] = records[-1].offset + 1
        if pending:
            await asyncio.gather(*pending)
        await self.consumer.commit(offsets)
        STAGE_SECONDS.labels("ingest").observe(time.perf_counter() - started)
