"""Head snapshots swap into infer under load: 30,000 shuttle events at 5,000 events/s
with their labels 10 s (of event time) late. Every event gets exactly one prediction,
the head versions that predictions name only move forward (per partition, in offset
order), and infer served several versions while the stream flowed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from models.datasets import shuttle
from streams.produce import produce_table
from streams.settings import Settings
from tests.conftest import Worker
from tests.test_engagement_pipeline import sample
from tests.test_pipeline import read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVENTS = 30_000
learned = 'headwater_head_labels_total{head="shuttle-head",outcome="learned"}'
RATE = 5_000


def test_snapshots_swap_in_under_load(settings: Settings, tmp_path: Path) -> None:
    # a day of horizon: four partitions drift apart in event time under load, and a
    # label may wait that long for its event's features
    s = settings.model_copy(update={"learn_snapshot_s": 0.3, "learn_snapshot_updates": 2000,
                                    "learn_report_s": 0.5, "head_horizon": "1d"})
    worker = Worker(s, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        events = shuttle(limit=EVENTS, sensors=4)
        asyncio.run(produce_table(s, events, s.topic("sensor-events"), rate=RATE,
                                  labels_delay_ms=10_000))

        infer = 'headwater_events_total{agent="infer"}'
        wait_for(lambda: sample(s, infer) >= EVENTS, 120,
                 f"{EVENTS} predictions (log: {worker.log})", interval=0.5)
        wait_for(lambda: sample(s, learned) >= EVENTS, 60, "every label learned")
        assert sample(s, 'headwater_dead_letters_total{agent="learn",'
                         'reason="unmatched-label"}') == 0
        assert worker.running()
    finally:
        worker.stop()
    records = sorted(asyncio.run(read_all(s, s.topic("predictions"))))  # partition, offset
    ids = [orjson.loads(v)["event_id"] for _, _, v in records]
    assert len(ids) == len(set(ids)) == EVENTS  # none lost, none twice
    served: set[int] = set()
    for p in {part for part, _, _ in records}:
        versions = [v for part, _, value in records if part == p
                    if (v := orjson.loads(value)["head_version"]) is not None]
        assert versions == sorted(versions), f"head versions went back in partition {p}"
        served |= set(versions)
    assert len(served) >= 3, f"only head versions {sorted(served)} were served under load"
