"""A load driver for overload and soak runs: paced Arrow producers and a worker sampler.

Shuttle-like sensor events (the dataset's readings repeated, fresh event ids, one
second of event time apart, round robin over the sensors) go to `sensor-events` as
Arrow batches, one per partition and send, so that producing costs little CPU beside
the worker's. `Producer.drive` holds a target rate on a monotonic schedule: each tick
sends what the elapsed time owes, so late ticks catch up instead of drifting.

`Sampler` (a background thread with its own event loop) records once per interval the
worker's consumer lag (end offset minus the committed offset of each of its groups, over
every input partition, in messages), the events acknowledged to the producer, the
messages in `predictions` (one per event with JSON predictions), and the worker's
resident memory from `/proc/<pid>/status` (VmRSS and its peak, VmHWM).

`drain_rate` turns the samples of a preloaded backlog being worked off into the
worker's capacity in events/s.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from models.datasets import shuttle
from schemas.events import ARROW, headers
from streams.outbox import Outbox
from streams.settings import SINGLE_PARTITION, Settings

__all__ = ["MIB", "Producer", "Sample", "Sampler", "ShuttleEvents", "drain_rate", "memory",
           "slope", "stages", "tally_predictions"]

START_MS = 1_388_534_400_000  # 2014-01-01, as bench/e2e.py
MIB = 1 << 20
T = TypeVar("T")


class ShuttleEvents:
    """An endless stream of shuttle sensor events; `take(n)` gives the next n as a table.

    >>> ev = ShuttleEvents(sensors=2, prefix="x", base=shuttle(limit=3))
    >>> t = ev.take(4)
    >>> t.column("event_id").to_pylist(), t.column("sensor_id").to_pylist()
    (['x-0', 'x-1', 'x-2', 'x-3'], ['sensor-0', 'sensor-1', 'sensor-0', 'sensor-1'])
    >>> f1 = t.column("readings.f1").to_pylist()
    >>> f1[3] == f1[0], t.num_columns
    (True, 12)
    >>> ev.take(1).column("event_time").to_pylist() == [START_MS + 4000]
    True
    """

    def __init__(self, sensors: int = 16, prefix: str = "load",
                 base: pa.Table | None = None) -> None:
        table = base if base is not None else shuttle()
        self.readings = table.select([n for n in table.schema.names
                                      if n.startswith("readings.")])
        self.sensors = sensors
        self.names = pa.array([f"sensor-{i}" for i in range(sensors)])
        self.prefix = pa.scalar(f"{prefix}-")
        self.next = 0

    def take(self, n: int) -> pa.Table:
        """The next `n` events: ids `<prefix>-<seq>`, sensor seq % sensors, time in seq s."""
        seq = np.arange(self.next, self.next + n, dtype=np.int64)
        self.next += n
        rows = self.readings.take(pa.array(seq % self.readings.num_rows))
        cols = {
            "event_id": pc.binary_join_element_wise(self.prefix,
                                                    pa.array(seq).cast(pa.string()), ""),
            "sensor_id": self.names.take(pa.array(seq % self.sensors)),
            "event_time": pa.array(START_MS + seq * 1000, pa.int64()),
        }
        return pa.table({**cols, **{n: rows.column(n) for n in rows.schema.names}})


class Producer:
    """Sends `ShuttleEvents` to `sensor-events` as Arrow batches, partitioned by sensor."""

    def __init__(self, settings: Settings, events: ShuttleEvents) -> None:
        self.settings = settings
        self.events = events
        self.topic = settings.topic("sensor-events")
        self.outbox = Outbox(settings)
        self.headers = headers(ARROW, "sensor-event.v1")
        self.sent = 0  # events handed to the producer
        self.acked = 0  # events the broker acknowledged (read by the sampler's thread)
        self._where: np.ndarray | None = None  # partition of each sensor

    async def start(self) -> None:
        await self.outbox.start()
        parts = await self.outbox.partitions(self.topic)
        self._where = np.array([self.outbox.partition(f"sensor-{i}".encode(), parts)
                                for i in range(self.events.sensors)])

    async def stop(self) -> None:
        await self.outbox.stop()

    def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` (say `lambda: producer.drive(...)`) in a fresh event loop, the producer
        connected for it: a blocking call for synchronous callers such as tests."""
        async def main() -> T:
            await self.start()
            try:
                return await work()
            finally:
                await self.stop()
        return asyncio.run(main())

    async def send(self, n: int) -> list[asyncio.Future[object]]:
        """Enqueue the next `n` events, one Arrow message (or a few) per partition."""
        assert self._where is not None, "Producer used before start()"
        first = self.events.next
        table = self.events.take(n)
        of_row = self._where[np.arange(first, first + n) % self.events.sensors]
        futures: list[asyncio.Future[object]] = []
        for p in np.unique(of_row):
            rows = table.filter(pa.array(of_row == p))
            sent = await self.outbox.send_table(self.topic, rows, partition=int(p),
                                                headers=self.headers)
            # a partition's messages are delivered in order: count its rows on the last
            sent[-1].add_done_callback(self._counter(rows.num_rows))
            futures += sent
        self.sent += n
        return futures

    def _counter(self, n: int) -> Callable[[asyncio.Future[object]], None]:
        def done(fut: asyncio.Future[object]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                self.acked += n
        return done

    async def preload(self, n: int, chunk: int = 8192) -> int:
        """Send `n` events as fast as the broker takes them; returns when all are acked."""
        pending: list[asyncio.Future[object]] = []
        for i in range(0, n, chunk):
            pending += await self.send(min(chunk, n - i))
            if len(pending) > 64:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        return n

    async def drive(self, rate: float, seconds: float, tick: float = 0.05,
                    chunk: int = 16384) -> float:
        """Send at `rate` events/s for `seconds`; returns the rate achieved (acked).

        Tick k is due at start + k * tick (monotonic clock); each tick sends what the time
        elapsed owes, at most `chunk` events a send, so a slow tick is made up by the next.
        """
        start, base = time.monotonic(), self.sent
        pending: list[asyncio.Future[object]] = []
        k = 0
        while (now := time.monotonic()) - start < seconds:
            owed = int(rate * (now - start)) - (self.sent - base)
            while owed > 0:
                pending += await self.send(min(owed, chunk))
                owed -= min(owed, chunk)
            pending = [f for f in pending if not f.done()]
            k += 1
            await asyncio.sleep(max(0.0, start + k * tick - time.monotonic()))
        owed = int(rate * seconds) - (self.sent - base)
        if owed > 0:
            pending += await self.send(owed)
        await asyncio.gather(*pending)
        return (self.sent - base) / (time.monotonic() - start)


def stages(s: Settings) -> list[tuple[str, str]]:
    """(consumer group, input topic) of every stage a sensor worker runs."""
    out = [(f"{s.app_id}-ingest", "sensor-events"), (s.app_id, "sensor-batches"),
           (s.app_id, "features")]
    if s.curate:
        out.append((f"{s.app_id}-curate", "predictions"))
    if s.learn:
        out.append((f"{s.app_id}-learn", "training"))
    return out


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of process `pid`, in bytes; (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    kb = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()
          if line.startswith(("VmRSS:", "VmHWM:"))}
    return kb.get("VmRSS", 0) * 1024, kb.get("VmHWM", 0) * 1024


@dataclass(frozen=True)
class Sample:
    """One look at the worker, `t` seconds after the sampler started."""

    t: float
    lag: int  # messages: sum over stages and partitions of end offset - committed offset
    by_stage: dict[str, int]  # "group topic" -> its lag
    acked: int  # events acknowledged to the producer
    predicted: int  # messages in `predictions` (events, with JSON predictions)
    rss: int  # bytes
    hwm: int  # bytes, peak resident set so far

    @property
    def behind(self) -> int:
        """Events sent but not yet predicted."""
        return self.acked - self.predicted


@dataclass
class Sampler:
    """Samples lag, predictions and memory every `interval` s in a background thread."""

    settings: Settings
    pid: Callable[[], int]  # the worker's pid now
    acked: Callable[[], int]  # events acknowledged so far
    interval: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="load-sampler", daemon=True)
        self._t0 = time.monotonic()
        self._ready = threading.Event()

    def start(self) -> Sampler:
        self._thread.start()
        self._ready.wait(30)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def last(self) -> Sample:
        """The latest sample (waits for the first)."""
        while not self.samples:
            if self.error is not None:
                raise RuntimeError("sampler failed") from self.error
            time.sleep(0.05)
        return self.samples[-1]

    def since(self, t: float) -> list[Sample]:
        """The samples taken at or after `t` (the sampler's clock: `self.now()`)."""
        return [x for x in self.samples if x.t >= t]

    def now(self) -> float:
        """Seconds since the sampler started, the clock of `Sample.t`."""
        return time.monotonic() - self._t0

    def _main(self) -> None:
        try:
            asyncio.run(self._loop())
        except BaseException as exc:  # noqa: BLE001 - reported to the reader of `last`
            self.error = exc
            self._ready.set()

    async def _loop(self) -> None:
        s = self.settings
        admin = AIOKafkaAdminClient(**s.kafka_options())
        consumer = AIOKafkaConsumer(**s.kafka_options(), enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            inputs = {(g, s.topic(t)): [TopicPartition(s.topic(t), p) for p in
                                        range(1 if t in SINGLE_PARTITION else s.partitions)]
                      for g, t in stages(s)}
            predictions = [TopicPartition(s.topic("predictions"), p)
                           for p in range(s.partitions)]
            k = 0
            while not self._stop.is_set():
                self.samples.append(await self._sample(admin, consumer, inputs, predictions))
                self._ready.set()
                k += 1
                wait = self._t0 + k * self.interval - time.monotonic()
                if wait < 0:  # a slow sample: skip ahead rather than sample in a burst
                    k += int(-wait // self.interval) + 1
                    wait = self._t0 + k * self.interval - time.monotonic()
                await asyncio.sleep(wait)
        finally:
            await consumer.stop()
            await admin.close()

    async def _sample(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer,
                      inputs: dict[tuple[str, str], list[TopicPartition]],
                      predictions: list[TopicPartition]) -> Sample:
        t = self.now()
        rss, hwm = memory(self.pid())
        acked = self.acked()
        ends = await consumer.end_offsets([tp for tps in inputs.values() for tp in tps]
                                          + predictions)
        committed: dict[str, dict[TopicPartition, int]] = {}
        by_stage = {}
        for (group, topic), tps in inputs.items():
            if group not in committed:
                done = await admin.list_consumer_group_offsets(group)
                committed[group] = {tp: m.offset for tp, m in done.items()}
            got = committed[group]
            by_stage[f"{group} {topic}"] = sum(max(0, ends[tp] - max(got.get(tp, 0), 0))
                                               for tp in tps)
        return Sample(t=t, lag=sum(by_stage.values()), by_stage=by_stage, acked=acked,
                      predicted=sum(ends[tp] for tp in predictions), rss=rss, hwm=hwm)


def drain_rate(samples: list[Sample], start: int, n: int, lo: float = 0.1,
               hi: float = 0.9) -> float:
    """Events/s at which predictions went from `start + lo * n` to `start + hi * n`
    (a backlog of `n` events worked off), interpolated between samples.

    >>> s = [Sample(float(t), 0, {}, 0, 1000 * t, 0, 0) for t in range(11)]
    >>> drain_rate(s, 0, 10_000)
    1000.0
    """
    def when(target: float) -> float:
        for a, b in zip(samples, samples[1:], strict=False):
            if a.predicted <= target <= b.predicted and b.predicted > a.predicted:
                return a.t + (b.t - a.t) * (target - a.predicted) / (b.predicted - a.predicted)
        raise ValueError(f"no samples around {target:.0f} predictions")
    t0, t1 = when(start + lo * n), when(start + hi * n)
    return (hi - lo) * n / (t1 - t0)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points).

    >>> round(slope([0, 1, 2, 3], [1, 3, 5, 7]), 9)
    2.0
    """
    if len(xs) < 2:
        return 0.0
    a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a[0])


async def tally_predictions(s: Settings, prefix: str, n: int) -> tuple[int, int, int]:
    """Read every JSON prediction now in `predictions` and tally those of the events
    `<prefix>-0` .. `<prefix>-<n-1>`: (distinct events predicted, duplicates, predictions
    of any other event id). Marks a bit per event, so millions cost megabytes."""
    seen = np.zeros(n, dtype=np.bool_)
    dup = foreign = 0
    lead = b'{"event_id":"' + prefix.encode() + b"-"
    c = AIOKafkaConsumer(**s.kafka_options(), enable_auto_commit=False,
                         auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                         fetch_max_bytes=32 << 20)
    await c.start()
    try:
        parts = [TopicPartition(s.topic("predictions"), p) for p in range(s.partitions)]
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        end = await c.end_offsets(parts)
        while [tp for tp in parts if await c.position(tp) < end[tp]]:
            for recs in (await c.getmany(timeout_ms=500, max_records=50_000)).values():
                ids = []
                for r in recs:
                    v = r.value or b""
                    if v.startswith(lead):  # the id is the document's first field
                        ids.append(int(v[len(lead):v.index(b'"', len(lead))]))
                    else:
                        foreign += 1
                idx = np.asarray(ids, dtype=np.int64)
                ok = (idx >= 0) & (idx < n)
                foreign += int((~ok).sum())
                idx = np.sort(idx[ok])
                again = np.concatenate([[False], idx[1:] == idx[:-1]]) | seen[idx]
                dup += int(again.sum())
                seen[idx] = True
    finally:
        await c.stop()
    return int(seen.sum()), dup, foreign
