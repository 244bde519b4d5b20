"""kill -9 the worker five times while 100,000 events flow: no event loses its prediction.

The guarantee is at-least-once (README, "Guarantees"), so duplicates are counted and
printed, not forbidden.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.datasets import shuttle
from streams.produce import produce_table
from streams.settings import Settings
from tests.conftest import Worker
from tests.test_pipeline import caught_up, read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVENTS = 100_000
KILLS = 5


def many_events(n: int) -> object:
    import pyarrow as pa

    base = shuttle(sensors=8)
    t = pa.concat_tables([base] * (-(-n // base.num_rows))).slice(0, n)
    return t.set_column(0, "event_id", pa.array([f"ev-{i:06d}" for i in range(n)]))


async def predictions_written(s: Settings) -> int:
    """Messages in the predictions topic (duplicates included): the worker's progress."""
    c = AIOKafkaConsumer(bootstrap_servers=s.bootstrap)
    await c.start()
    try:
        parts = [TopicPartition(s.topic("predictions"), p) for p in range(s.partitions)]
        return sum((await c.end_offsets(parts)).values())
    finally:
        await c.stop()


def test_kill_9_five_times_loses_nothing(settings: Settings, worker: Worker,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    s = settings
    events = many_events(EVENTS)
    asyncio.run(produce_table(s, events, s.topic("sensor-events"), chunk=5000))  # type: ignore[arg-type]
    for k in range(1, KILLS + 1):
        target = k * EVENTS // (KILLS + 2)
        wait_for(lambda t=target: asyncio.run(predictions_written(s)) >= t, 180,  # type: ignore[misc]
                 f"{target} predictions before kill {k}")
        worker.kill()
        worker.restart()
    worker.wait_ready()
    wait_for(lambda: asyncio.run(caught_up(s)), 240, "the worker to commit every input")

    ids = Counter(orjson.loads(v)["event_id"]
                  for _, _, v in asyncio.run(read_all(s, s.topic("predictions"))))
    lost = EVENTS - len(ids)
    duplicates = sum(ids.values()) - len(ids)
    with capsys.disabled():
        print(f"\nkill -9 x{KILLS} during {EVENTS:,} events: lost {lost}, "
              f"duplicate predictions {duplicates:,}")
    assert lost == 0
    assert set(ids) == set(events.column("event_id").to_pylist())  # type: ignore[attr-defined]
    assert worker.running()
