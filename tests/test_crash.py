"""kill -9 the worker five times while 100,000 events flow: no event loses its prediction.

The guarantee is at-least-once (README, "Guarantees"), so duplicates are counted and
printed, not forbidden.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import urllib.request
from collections import Counter

import orjson
import pytest

from models.datasets import shuttle
from streams.produce import produce_table
from streams.settings import Settings
from tests.conftest import Worker
from tests.test_pipeline import caught_up, read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVENTS = 100_000
KILLS = 5
RATE = 2_500  # events/s: the stream flows for 40 s, through all five kills


def many_events(n: int) -> object:
    import pyarrow as pa

    base = shuttle(sensors=8)
    t = pa.concat_tables([base] * (-(-n // base.num_rows))).slice(0, n)
    return t.set_column(0, "event_id", pa.array([f"ev-{i:06d}" for i in range(n)]))


def ready(s: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.web_port}/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_kill_9_five_times_loses_nothing(settings: Settings, worker: Worker,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    s = settings
    events = many_events(EVENTS)
    producer = threading.Thread(target=lambda: asyncio.run(produce_table(
        s, events, s.topic("sensor-events"), rate=RATE, chunk=500)))  # type: ignore[arg-type]
    producer.start()
    rng = random.Random(7)
    for k in range(1, KILLS + 1):
        wait_for(lambda: ready(s), 120, f"the worker ready before kill {k}")
        time.sleep(rng.uniform(1.0, 4.0))  # a random point in this life, not a wait
        worker.kill()
        worker.restart()
    producer.join(timeout=300)
    assert not producer.is_alive()
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
