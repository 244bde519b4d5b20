"""MovieLens ratings through the worker, killed once mid-stream: every rating's engagement
features equal an uninterrupted run's, and the sensor model leaves them unscored."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import urllib.request

import numpy as np
import orjson
import pyarrow as pa
import pytest
from aiokafka.partitioner import DefaultPartitioner

from models.datasets import movielens
from models.engagement import EntityState, engagement_features
from schemas.codec import read_ipc
from streams.produce import produce_table
from streams.settings import Settings
from tests.conftest import Worker
from tests.data import shared
from tests.test_crash import ready
from tests.test_pipeline import behind, caught_up, metric, read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVENTS = 30_000


def per_partition(events: pa.Table, s: Settings) -> tuple[list[str], np.ndarray, list[str]]:
    """One uninterrupted pass per input partition (state lives with the user's partition)."""
    part = DefaultPartitioner()
    parts = list(range(s.partitions))
    where = np.array([part(u.encode(), parts, parts)
                      for u in events.column("user_id").to_pylist()])
    ids, rows, names = [], [], []
    for p in parts:
        state: dict[str, EntityState] = {}
        mine = events.filter(pa.array(where == p))
        for batch in mine.to_batches(max_chunksize=1000):
            out, new = engagement_features(batch, state, s.engagement_features())
            state.update(new)
            names = out.schema.metadata[b"feature_names"].decode().split(",")
            ids += out.column("event_id").to_pylist()
            rows.append(np.column_stack([out.column(c).to_numpy() for c in names]))
    return ids, np.concatenate(rows), names


def test_engagement_features_survive_a_kill_9(settings: Settings, worker: Worker) -> None:
    s = settings
    events = movielens(shared("movielens-100k"), limit=EVENTS)
    producer = threading.Thread(target=lambda: asyncio.run(produce_table(
        s, events, s.topic("engagement-events"), rate=5000, chunk=500)))
    producer.start()
    wait_for(lambda: sample(s, 'headwater_events_total{agent="featurize-engagement"}') > 0,
             180, "engagement features flowing")
    worker.kill()
    worker.restart()
    producer.join(timeout=120)
    assert not producer.is_alive()
    wait_for(lambda: ready(s), 120, "the worker ready again")
    wait_for(lambda: asyncio.run(caught_up(s)), 240, "the worker to commit every input",
             detail=lambda: asyncio.run(behind(s)))

    want_ids, want, names = per_partition(events, s)
    batches = [read_ipc(v) for _, _, v in asyncio.run(read_all(s, s.topic("features")))]
    got = pa.concat_tables([b for b in batches
                            if b.schema.metadata[b"feature_set"] == b"engagement.v1"])
    index = {e: i for i, e in enumerate(want_ids)}
    rows = np.array([index[e] for e in got.column("event_id").to_pylist()])
    missing = sorted(set(range(EVENTS)) - set(rows.tolist()))
    agent = '{agent="featurize-engagement"}'
    assert not missing, (
        f"{len(missing)} events have no features, from #{missing[0]}; replayed rows "
        f"{sample(s, 'headwater_replayed_rows_total' + agent)}, duplicates "
        f"{sample(s, 'headwater_duplicates_total' + agent)}")
    np.testing.assert_allclose(np.column_stack([got.column(c).to_numpy() for c in names]),
                               want[rows], rtol=1e-9, atol=1e-9)
    # an event time two days ahead of its ingest goes to dead-letters, not into state
    ahead = int(time.time() * 1000) + 2 * 86_400_000
    future = pa.table({"event_id": ["f1", "f2"], "user_id": ["1", "2"], "item_id": ["9", "9"],
                       "event_time": [ahead, ahead], "kind": ["click", "impression"]})
    asyncio.run(produce_table(s, future, s.topic("engagement-events")))

    def future_letters() -> list[dict[str, object]]:
        letters = [orjson.loads(v) for _, _, v in asyncio.run(read_all(s, s.topic("dead-letters")))]
        return [d for d in letters if d["reason"] == "future"]

    wait_for(lambda: len(future_letters()) == 2, 60, "two future dead letters")
    assert {orjson.loads(base64.b64decode(d["raw_b64"]))["event_id"]  # type: ignore[arg-type]
            for d in future_letters()} == {"f1", "f2"}

    # the sensor model does not score engagement rows (this life's share is counted)
    assert sample(s, 'headwater_unscored_rows_total{feature_set="engagement.v1"}') > 0
    assert worker.running()


def sample(s: Settings, name: str) -> float:
    """One sample from the worker's /metrics, 0 while it is not there (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.web_port}/metrics", timeout=2) as r:
            return metric(r.read().decode(), name)
    except (OSError, AssertionError):
        return 0.0
