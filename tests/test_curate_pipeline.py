"""The curate stage on the real broker: predictions in, samples within the budget out, each
with its features and reason, none twice; a bad prediction is dead-lettered."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import orjson
import pyarrow as pa
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from models.datasets import shuttle
from schemas.codec import read_ipc
from schemas.events import JSON, headers
from streams.produce import produce_table
from streams.settings import Settings
from tests.conftest import Worker
from tests.test_pipeline import behind, caught_up, read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVENTS = 20_000
BUDGET = 0.05


@pytest.fixture(params=["json", "arrow"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """conftest's settings with a 5% budget held over a day (the shuttle events are one
    second apart: the whole stream is 5.6 hours of event time), predictions as JSON
    documents or as Arrow batches (curate reads those by column)."""
    return settings.model_copy(update={"curate_budget": f"{BUDGET:.0%}",
                                       "curate_window": "1d",
                                       "predictions_format": request.param})


async def curate_behind(s: Settings) -> list[tuple[int, int | None, int]]:
    """(partition, committed, end) of each non-empty predictions partition curate has
    not committed to its end."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
    c = AIOKafkaConsumer(bootstrap_servers=s.bootstrap)
    await admin.start()
    await c.start()
    try:
        parts = [TopicPartition(s.topic("predictions"), p) for p in range(s.partitions)]
        end = await c.end_offsets(parts)
        done = await admin.list_consumer_group_offsets(f"{s.app_id}-curate")
        return [(tp.partition, done[tp].offset if tp in done else None, end[tp])
                for tp in parts if end[tp] and (tp not in done or done[tp].offset < end[tp])]
    finally:
        await c.stop()
        await admin.close()


async def curate_done(s: Settings) -> bool:
    """The curate group has committed every prediction."""
    return not await curate_behind(s)


async def send_bad(s: Settings) -> None:
    p = AIOKafkaProducer(bootstrap_servers=s.bootstrap)
    await p.start()
    try:
        for value in (b"not json", orjson.dumps({"event_id": "x", "probability": 2.0})):
            await p.send_and_wait(s.topic("predictions"), value, key=b"bad",
                                  headers=headers(JSON, "prediction.v1"))
    finally:
        await p.stop()


def test_curate_samples_within_the_budget_with_features_and_reasons(
        settings: Settings, worker: Worker) -> None:
    s = settings
    events = shuttle(limit=EVENTS)
    asyncio.run(produce_table(s, events, s.topic("sensor-events"), rate=0, chunk=1000))
    asyncio.run(send_bad(s))
    wait_for(lambda: asyncio.run(caught_up(s)), 180, "the worker to commit every input",
             detail=lambda: asyncio.run(behind(s)))
    wait_for(lambda: asyncio.run(curate_done(s)), 120, "curate to commit every prediction")

    samples = [orjson.loads(v) for _, _, v in asyncio.run(read_all(s, s.topic("curation")))]
    ids = Counter(x["event_id"] for x in samples)
    assert max(ids.values()) == 1  # never twice
    assert set(ids) <= set(events.column("event_id").to_pylist())
    # the budget, never above it; the first window fills as the stream starts
    assert 0.85 * BUDGET * EVENTS <= len(samples) <= BUDGET * EVENTS + 1, len(samples)
    assert {x["strategy"] for x in samples} == {"least-confidence"}
    assert all(x["reason"] and x["model_name"] == "shuttle" and x["model_version"] == 1
               for x in samples)
    explored = sum(x["reason"].startswith("explore") for x in samples)
    assert 0.1 * len(samples) <= explored <= 0.3 * len(samples)  # 20% of the budget
    # a random pick below the threshold is learned about 1 / (0.2 x 5%) times, at most 10
    assert {x["weight"] for x in samples if not x["reason"].startswith("explore")} == {1}
    assert {x["weight"] for x in samples if "learned 10x" in x["reason"]} == {10}

    # features equal the ones on the features topic, for every sample
    features = pa.concat_tables([read_ipc(v) for _, _, v in
                                 asyncio.run(read_all(s, s.topic("features")))])
    names = features.schema.metadata[b"feature_names"].decode().split(",")
    index = {e: i for i, e in enumerate(features.column("event_id").to_pylist())}
    for x in samples[:200]:
        row = index[x["event_id"]]
        want = {n: features.column(n)[row].as_py() for n in names}
        assert set(x["features"]) == set(names)
        np.testing.assert_allclose([x["features"][n] if x["features"][n] is not None
                                    else np.nan for n in names],
                                   [w if w is not None else np.nan for w in
                                    want.values()], rtol=1e-12)

    # uncertainty picks are less sure than the average prediction
    values = [v for _, _, v in asyncio.run(read_all(s, s.topic("predictions")))]
    if s.predictions_format == "json":
        good = [orjson.loads(v)["probability"] for v in values
                if v.startswith(b'{"event_id":"shuttle-')]  # not the two bad ones sent above
    else:
        good = [p for v in values if not v.startswith(b"not json") and not v.startswith(b"{")
                for p in read_ipc(v).column("probability").to_pylist()]
    assert len(good) == EVENTS
    confidence = np.mean([max(p, 1 - p) for p in good])
    picked = [max(x["probability"], 1 - x["probability"]) for x in samples
              if not x["reason"].startswith("explore")]
    assert np.mean(picked) < confidence

    letters = [orjson.loads(v) for _, _, v in asyncio.run(read_all(s, s.topic("dead-letters")))]
    mine = [d for d in letters if d["agent"] == "curate"]
    assert sorted(d["reason"] for d in mine) == ["bad-prediction", "not-json"]
    assert all(d["source_topic"] == s.topic("predictions") and d["source_offset"] >= 0
               for d in mine)
