"""The broker stops and starts again mid-stream: the worker reconnects, nothing is lost."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import orjson
import pytest

from streams.broker import LocalKafka
from streams.produce import produce_table
from streams.settings import Settings
from tests.conftest import Worker
from tests.test_crash import many_events, ready
from tests.test_pipeline import behind, caught_up, read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVENTS = 40_000
RATE = 2_000


def test_broker_restart_mid_stream(settings: Settings, worker: Worker, kafka: LocalKafka,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    s = settings
    events = many_events(EVENTS)
    half = events.slice(0, EVENTS // 2)  # type: ignore[attr-defined]
    rest = events.slice(EVENTS // 2)  # type: ignore[attr-defined]
    first = threading.Thread(target=lambda: asyncio.run(produce_table(
        s, half, s.topic("sensor-events"), rate=RATE, chunk=500)))
    first.start()
    wait_for(lambda: ready(s), 120, "the worker ready")
    first.join(timeout=120)

    assert kafka.stop()
    assert not kafka.answers()
    kafka.start()
    asyncio.run(produce_table(s, rest, s.topic("sensor-events"), rate=RATE, chunk=500))
    wait_for(lambda: asyncio.run(caught_up(s)), 240, "the worker to commit every input",
             detail=lambda: asyncio.run(behind(s)))

    ids = Counter(orjson.loads(v)["event_id"]
                  for _, _, v in asyncio.run(read_all(s, s.topic("predictions"))))
    with capsys.disabled():
        print(f"\nbroker restart during {EVENTS:,} events: lost {EVENTS - len(ids)}, "
              f"duplicate predictions {sum(ids.values()) - len(ids):,}")
    assert set(ids) == set(events.column("event_id").to_pylist())  # type: ignore[attr-defined]
    assert worker.running()
