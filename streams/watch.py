"""`headwater watch`: follow the predictions topic and show what arrives.

A live line with the count, the rate and the latency seen (source message to
prediction), a few sample predictions, and a summary when it stops (after `expect`
predictions, or `idle` seconds without any).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.settings import Settings

__all__ = ["WatchError", "WatchSummary", "watch_predictions"]


@dataclass
class WatchSummary:
    count: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    latencies_ms: list[int] = field(default_factory=list)
    samples: list[dict[str, object]] = field(default_factory=list)
    versions: set[int] = field(default_factory=set)

    @property
    def rate(self) -> float:
        """Predictions per second, between the first and the last prediction seen."""
        if self.first_ms is None or self.last_ms is None or self.last_ms <= self.first_ms:
            return 0.0
        return self.count / ((self.last_ms - self.first_ms) / 1000)

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def line(self) -> str:
        return (f"predictions {self.count:>8,}  rate {self.rate:>9,.0f}/s  "
                f"latency p50 {self.latency(50):6.0f} ms  p99 {self.latency(99):6.0f} ms")


async def watch_predictions(settings: Settings, *, since_ms: int | None = None,
                            expect: int | None = None, idle: float = 10.0, samples: int = 3,
                            out: TextIO = sys.stdout) -> WatchSummary:
    """Read predictions produced from `since_ms` on (default: from now) and report them."""
    topic = settings.topic("predictions")
    consumer = AIOKafkaConsumer(**settings.kafka_options(),
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    summary = WatchSummary()
    try:
        parts = [TopicPartition(topic, p)
                 for p in sorted(await _partitions(consumer, topic, wait=idle))]
        consumer.assign(parts)
        if since_ms is None:
            await consumer.seek_to_end(*parts)
        else:
            found = await consumer.offsets_for_times({tp: since_ms for tp in parts})
            ends = await consumer.end_offsets(parts)
            for tp in parts:
                ot = found.get(tp)
                consumer.seek(tp, ot.offset if ot is not None else ends[tp])
        last_seen = time.monotonic()
        last_print = 0.0
        live = out.isatty()  # a terminal gets one updating line; a pipe, a line every 2 s
        clear = "\r\033[K" if live else ""
        while expect is None or summary.count < expect:
            polled = await consumer.getmany(timeout_ms=200, max_records=10_000)
            now = time.monotonic()
            for records in polled.values():
                for rec in records:
                    _take(summary, rec.value, rec.timestamp, samples, out, clear)
            if polled:
                last_seen = now
            elif now - last_seen > idle:
                break
            if now - last_print > (0.5 if live else 2.0):
                out.write(clear + summary.line() + ("" if live else "\n"))
                out.flush()
                last_print = now
        out.write(clear + summary.line() + "\n")
        out.flush()
    finally:
        await consumer.stop()
    return summary


async def _partitions(consumer: AIOKafkaConsumer, topic: str, wait: float) -> set[int]:
    """The topic's partitions, waiting up to `wait` seconds for a worker to create it."""
    deadline = time.monotonic() + wait
    while True:
        # aiokafka has no public call that refreshes and returns one topic's partitions
        cluster = await consumer._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
        if parts:
            return set(parts)
        if time.monotonic() > deadline:
            raise WatchError(f"topic {topic} does not exist (is the worker running?)")
        await asyncio.sleep(0.2)


class WatchError(RuntimeError):
    """The predictions topic could not be followed."""



def _take(summary: WatchSummary, value: bytes | None, ts: int, samples: int,
          out: TextIO, clear: str) -> None:
    if not value:
        return
    p = orjson.loads(value)
    summary.count += 1
    summary.first_ms = ts if summary.first_ms is None else min(summary.first_ms, ts)
    summary.last_ms = ts if summary.last_ms is None else max(summary.last_ms, ts)
    summary.versions.add(int(p["model_version"]))
    if p.get("source_time") is not None:
        summary.latencies_ms.append(int(p["predict_time"]) - int(p["source_time"]))
    if len(summary.samples) < samples:
        summary.samples.append(p)
        out.write(clear + "sample: " + orjson.dumps(p).decode() + "\n")
