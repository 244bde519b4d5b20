"""Messages Faust skipped on an agent's input, noticed by their offsets and read back.

Faust (0.15.3) can drop records it has fetched when its flow stops during recovery or a
rebalance, go on fetching after them, and then count the hole as a compacted-topic gap
and commit past it (faust-streaming issues #216, #221 and #606). Our agent inputs are
written without transactions or compaction, so their offsets have no holes: a message
whose offset is past the one expected means Faust lost the ones between. `Gaps.fill`
reads them back from the broker, in order, for the agent to process before the message
it was given; the agents' replay checks make a message seen twice harmless, and each
repaired message is counted in `headwater_offset_gaps_total` and logged.

The first message of a partition in a worker's life is checked against the group's
committed offset: it is where Faust seeks to, so a message past it was preceded by a
drop. Faust is then told the repaired range is a gap (`repaired`): a hole at the head of
what it has seen would otherwise stop its commits for that partition for good.

A drop at the tail of a partition has no later message to reveal it: the stream has
paused or ended, and the agent waits for messages Faust has already read past. `tail`
finds those: a partition whose fetcher has read at or past the next offset the agent
expects, yet which has given the agent nothing for a while, is read back up to Faust's
read offset (never past the partition's end) for the agent to process. A partition
Faust has stopped fetching (its read offset behind what the agent expects, the broker
holding more, and nothing given to the agent for `stuck_s`, six idle periods by
default) is read back too, up to `STUCK_READ` messages a sweep, with a warning: a
test_crash run once ended with the last two messages of an input partition never
fetched after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.metrics import OFFSET_GAPS
from streams.settings import Settings

__all__ = ["Gaps", "Record", "STUCK_READ"]

#: the most messages one sweep reads back from a partition Faust stopped fetching
STUCK_READ = 1_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """A message read back, with the attributes the agents use of a Faust message."""

    topic: str
    partition: int
    offset: int
    timestamp: float | None  # seconds, as Faust's Message has it
    key: bytes | None
    value: bytes | None


class Gaps:
    """Per input partition, the next offset an agent expects, and the messages it missed."""

    def __init__(self, settings: Settings, group: str,
                 repaired: Callable[[str, int, int, int], Awaitable[None]] | None = None
                 ) -> None:
        self.settings = settings
        self.group = group
        self.repaired = repaired
        self.expected: dict[tuple[str, int], int] = {}
        self.seen: dict[tuple[str, int], float] = {}  # when a partition last gave a message
        self.born = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one side consumer: its calls never interleave

    async def fill(self, message: Any) -> list[Any]:
        """The messages to process for `message`, in order: any skipped before it, then it.

        If the broker cannot be asked, `message` alone, logged: an agent must not crash
        (Faust acknowledges the messages of an agent that raises)."""
        try:
            async with self._lock:
                return await self._fill(message)
        except Exception:
            log.exception("%s:%d: could not check for skipped offsets before %d",
                          message.topic, message.partition, message.offset)
            return [message]

    async def _fill(self, message: Any) -> list[Any]:
        key = (message.topic, message.partition)
        self.seen[key] = time.monotonic()
        expected = self.expected.get(key)
        if expected is None:
            expected = await self._committed(message.topic, message.partition)
        self.expected[key] = message.offset + 1
        if expected is None or message.offset <= expected:
            return [message]  # in order, or a replay after a seek back
        return [*await self._repair(message.topic, message.partition, expected,
                                    message.offset), message]

    async def tail(self, read: Mapping[tuple[str, int], int | None], idle_s: float,
                   since: float = 0.0, stuck_s: float | None = None) -> list[Any]:
        """Messages Faust read past without giving them to the agent, at partitions' tails.

        `read`: for each input partition the agent holds, the last offset Faust's
        fetcher read (None before any). A partition qualifies when that offset is at or
        past the next one the agent expects and the partition has given the agent
        nothing for `idle_s` seconds, counted from `since` (monotonic) at the earliest;
        its messages from the expected offset to the read one (bounded by the
        partition's end) are read back, in order. A partition quiet for `stuck_s`
        (default 6 x `idle_s`) whose read offset is behind while the log holds more is
        read back from the expected offset, at most `STUCK_READ` messages a call.
        Errors are logged and give nothing: the next call tries again."""
        stuck = 6 * idle_s if stuck_s is None else stuck_s
        try:
            async with self._lock:
                out: list[Any] = []
                for (topic, partition), last in read.items():
                    out += await self._tail(topic, partition, last, idle_s, since, stuck)
                return out
        except Exception:
            log.exception("could not check the tails of %s", sorted(read))
            return []

    async def _tail(self, topic: str, partition: int, last: int | None, idle_s: float,
                    since: float, stuck_s: float) -> list[Any]:
        key = (topic, partition)
        quiet = time.monotonic() - max(self.seen.get(key, self.born), since)
        if quiet < idle_s or (last is None and quiet < stuck_s):
            return []
        expected = self.expected.get(key)
        if expected is None:
            expected = await self._committed(topic, partition)
        if expected is None:
            return []
        end = await self._end(topic, partition)
        if last is None or last < expected:  # Faust has not fetched what the agent expects
            if quiet < stuck_s or end <= expected:
                return []
            last = min(end, expected + STUCK_READ) - 1
            log.warning("%s:%d: nothing fetched past offset %d for %.0f s while the log "
                        "ends at %d; reading back up to %d", topic, partition, expected - 1,
                        quiet, end, last)
        stop = min(last + 1, end)
        if stop <= expected:
            return []
        self.expected[key] = stop
        self.seen[key] = time.monotonic()
        return await self._repair(topic, partition, expected, stop)

    async def _repair(self, topic: str, partition: int, start: int, stop: int) -> list[Any]:
        """Offsets start..stop-1 read back, counted, logged, and marked done for Faust."""
        missed = await self._read(topic, partition, start, stop)
        if self.repaired is not None:  # Faust may otherwise never commit past the hole
            await self.repaired(topic, partition, start, stop)
        OFFSET_GAPS.labels(topic).inc(len(missed))
        log.warning("%s:%d: offsets %d..%d never reached the agent; read %d back from the "
                    "broker", topic, partition, start, stop - 1, len(missed))
        return missed

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            # never subscribes: it reads the group's commits and assigned ranges only
            consumer = AIOKafkaConsumer(
                **self.settings.kafka_options(), group_id=self.group,
                enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024)
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def _committed(self, topic: str, partition: int) -> int | None:
        offset: int | None = await (await self._client()).committed(
            TopicPartition(topic, partition))
        return offset

    async def _end(self, topic: str, partition: int) -> int:
        tp = TopicPartition(topic, partition)
        end: int = (await (await self._client()).end_offsets([tp]))[tp]
        return end

    async def _read(self, topic: str, partition: int, start: int, stop: int) -> list[Record]:
        """The messages at offsets start..stop-1 of one partition."""
        consumer = await self._client()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        out: list[Record] = []
        while await consumer.position(tp) < stop:
            for r in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if r.offset < stop:
                    out.append(Record(topic, partition, r.offset, r.timestamp / 1000, r.key,
                                      r.value))
        return out
