"""kill -9 the worker five times while 100,000 events flow: no event loses its prediction,
and every event's features equal those of an uninterrupted run.

The guarantee is at-least-once (README, "Guarantees"), so duplicates are counted and
printed, not forbidden; every copy of an event's features must be the uninterrupted one.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import urllib.request
from collections import Counter

import numpy as np
import orjson
import pyarrow as pa
import pytest

from models.datasets import SHUTTLE_START_MS, shuttle
from models.features import SensorState, sensor_features
from schemas.codec import read_ipc
from streams.produce import produce_table
from streams.settings import Settings
from tests.conftest import Worker
from tests.test_pipeline import behind, caught_up, read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVENTS = 100_000
KILLS = 5
RATE = 2_500  # events/s: the stream flows for 40 s, through all five kills


def many_events(n: int) -> pa.Table:
    """The shuttle readings repeated to n events, one second apart, dealt to 8 sensors."""
    base = shuttle(sensors=8)
    t = pa.concat_tables([base] * (-(-n // base.num_rows))).slice(0, n)
    t = t.set_column(0, "event_id", pa.array([f"ev-{i:06d}" for i in range(n)]))
    return t.set_column(2, "event_time", pa.array(SHUTTLE_START_MS + np.arange(n) * 1000))


def uninterrupted(events: pa.Table, s: Settings) -> tuple[list[str], np.ndarray, list[str]]:
    """Event ids, features and names of one uninterrupted pass, state carried along."""
    state: dict[str, SensorState] = {}
    parts = []
    for batch in events.drop_columns(["label"]).to_batches(max_chunksize=4096):
        out, new, _ = sensor_features(batch, state, s.sensor_features())
        state.update(new)
        parts.append(out)
    t = pa.Table.from_batches(parts)
    names = t.schema.metadata[b"feature_names"].decode().split(",")
    return (t.column("event_id").to_pylist(),
            np.column_stack([t.column(c).to_numpy() for c in names]), names)


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
        s, events, s.topic("sensor-events"), rate=RATE, chunk=500)))
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
    wait_for(lambda: asyncio.run(caught_up(s)), 240, "the worker to commit every input",
             detail=lambda: asyncio.run(behind(s)))

    ids = Counter(orjson.loads(v)["event_id"]
                  for _, _, v in asyncio.run(read_all(s, s.topic("predictions"))))
    lost = EVENTS - len(ids)
    duplicates = sum(ids.values()) - len(ids)
    with capsys.disabled():
        print(f"\nkill -9 x{KILLS} during {EVENTS:,} events: lost {lost}, "
              f"duplicate predictions {duplicates:,}")
    assert lost == 0
    assert set(ids) == set(events.column("event_id").to_pylist())
    assert worker.running()

    want_ids, want, names = uninterrupted(events, s)
    got = pa.concat_tables([read_ipc(v) for _, _, v in
                            asyncio.run(read_all(s, s.topic("features")))])
    index = {e: i for i, e in enumerate(want_ids)}
    rows = np.array([index[e] for e in got.column("event_id").to_pylist()])
    assert set(rows.tolist()) == set(range(EVENTS))  # every event's features, at least once
    with capsys.disabled():
        print(f"features: {got.num_rows:,} rows for {EVENTS:,} events, "
              f"each equal to the uninterrupted run's")
    np.testing.assert_allclose(np.column_stack([got.column(c).to_numpy() for c in names]),
                               want[rows], rtol=1e-9, atol=1e-9)
