"""The worker's own producer: batch sends, keyed per-event sends, and dead letters.

Faust's `topic.send` costs tens of microseconds a message; for one prediction per event
that would cap the pipeline (DESIGN.md §6). The outbox appends messages straight into
aiokafka record batches, one per partition, and sends each batch whole.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from schemas.codec import Rejected, write_ipc_parts
from schemas.events import DeadLetter
from streams.metrics import DEAD_LETTERS
from streams.settings import Settings

__all__ = ["Outbox"]

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
MAX_REQUEST = 8 * 1024 * 1024
#: the largest Arrow stream one message carries: half the request limit leaves room for
#: the record's headers and key, and for batches that grow when re-encoded downstream
TABLE_LIMIT = MAX_REQUEST // 2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Outbox:
    """Wraps one idempotent AIOKafkaProducer; every send returns an awaitable delivery."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self.recent: Counter[tuple[str, str]] = Counter()  # (agent, reason) since last summary

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("Outbox used before start()")
        return self._producer

    async def start(self) -> None:
        """Connect the producer (it must be created inside the running event loop)."""
        if self._producer is not None:
            return
        self._producer = AIOKafkaProducer(
            **self.settings.kafka_options(),
            acks="all", enable_idempotence=True, linger_ms=self.settings.producer_linger_ms,
            max_batch_size=1024 * 1024, max_request_size=MAX_REQUEST)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None,
                   partition: int | None = None, headers: Headers | None = None
                   ) -> asyncio.Future[object]:
        """Enqueue one message; await the result for its delivery."""
        fut: asyncio.Future[object] = await self.producer.send(
            topic, value, key=key, partition=partition, headers=headers)
        return fut

    async def send_table(self, topic: str, table: pa.RecordBatch | pa.Table, *,
                         partition: int | None = None, headers: Headers | None = None,
                         limit: int = TABLE_LIMIT) -> list[asyncio.Future[object]]:
        """Send `table` as Arrow IPC messages of at most `limit` bytes, rows in order.

        A batch re-encoded with more columns can outgrow the largest message the broker
        takes even when the messages it came from fit; sent whole it was refused and
        stopped the stage.
        """
        return [await self.send(topic, part, partition=partition, headers=headers)
                for part in write_ipc_parts(table, limit)]

    async def partitions(self, topic: str) -> list[int]:
        if topic not in self._partitions:
            parts = await self.producer.partitions_for(topic)
            self._partitions[topic] = sorted(parts)
        return self._partitions[topic]

    def partition(self, key: bytes, parts: list[int]) -> int:
        """The partition any Kafka client's default partitioner picks for `key`."""
        p: int = self._partitioner(key, parts, parts)
        return p

    async def send_keyed(self, topic: str, keys: Sequence[str], values: Sequence[bytes],
                         headers: Headers) -> list[asyncio.Future[object]]:
        """Send one message per (key, value), partitioned by key like any Kafka client.

        Messages of the same partition keep their order.
        """
        parts = await self.partitions(topic)
        where: dict[str, tuple[int, bytes]] = {}
        batches: dict[int, Any] = {}  # aiokafka BatchBuilder (untyped)
        futures: list[asyncio.Future[object]] = []
        ts = now_ms()
        for key, value in zip(keys, values, strict=True):
            found = where.get(key)
            if found is None:
                kb = key.encode()
                found = where[key] = (self.partition(kb, parts), kb)
            p, kb = found
            batch = batches.get(p)
            if batch is None:
                batch = batches[p] = self.producer.create_batch()
            if batch.append(key=kb, value=value, timestamp=ts, headers=headers) is None:
                futures.append(await self.producer.send_batch(batch, topic, partition=p))
                batch = batches[p] = self.producer.create_batch()
                batch.append(key=kb, value=value, timestamp=ts, headers=headers)
        for p, batch in batches.items():
            futures.append(await self.producer.send_batch(batch, topic, partition=p))
        return futures

    async def send_to_partition(self, topic: str, partition: int,
                                records: Sequence[tuple[bytes, bytes]]
                                ) -> list[asyncio.Future[object]]:
        """Send (key, value) records to one partition, in order, a few record batches."""
        futures: list[asyncio.Future[object]] = []
        ts = now_ms()
        batch = self.producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=ts, headers=[]) is None:
                futures.append(await self.producer.send_batch(batch, topic, partition=partition))
                batch = self.producer.create_batch()
                batch.append(key=key, value=value, timestamp=ts, headers=[])
        if batch.record_count():
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        return futures

    def summary(self) -> str | None:
        """One line on the dead letters since the last call, or None if there were none.

        >>> o = Outbox(Settings())
        >>> o.recent.update({("ingest", "not-json"): 3, ("infer", "missing-feature"): 1})
        >>> o.summary()
        'dead letters since last summary: 4 (infer/missing-feature 1, ingest/not-json 3)'
        >>> o.summary() is None
        True
        """
        if not self.recent:
            return None
        parts = ", ".join(f"{a}/{r} {n}" for (a, r), n in sorted(self.recent.items()))
        total = sum(self.recent.values())
        self.recent.clear()
        return f"dead letters since last summary: {total} ({parts})"

    async def dead_letter(self, agent: str, rejected: Rejected, *, topic: str, partition: int,
                          offset: int, key: bytes | None, raw: bytes | None
                          ) -> asyncio.Future[object]:
        """Publish a DeadLetter with the source coordinates and reason, and count it."""
        raw = raw or b""
        limit = self.settings.dead_letter_max_raw
        dl = DeadLetter(
            agent=agent, reason=rejected.reason, detail=rejected.detail, source_topic=topic,
            source_partition=partition, source_offset=offset, source_row=rejected.row,
            source_key_b64=base64.b64encode(key).decode() if key is not None else None,
            raw_b64=base64.b64encode(raw[:limit]).decode(), raw_truncated=len(raw) > limit,
            dead_time=now_ms())
        DEAD_LETTERS.labels(agent, rejected.reason).inc()
        self.recent[(agent, rejected.reason)] += 1
        return await self.send(self.settings.topic("dead-letters"), dl.to_json(), key=key,
                               headers=dl.headers())
