"""/metrics of a running worker, scraped while a dataset with delayed labels is replayed
through the whole loop (ingest, featurize, infer, learn, curate) on the real broker:
every metric the dashboard charts is there, with values that agree with the topics."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import urllib.request
from collections import defaultdict

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from models.datasets import shuttle
from schemas.events import JSON, headers
from streams.produce import produce_table
from streams.settings import Settings
from tests.conftest import Worker
from tests.test_curate_pipeline import curate_behind, curate_done
from tests.test_pipeline import behind, caught_up, read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVENTS = 8_000
BAD = 25
SAMPLE = re.compile(r"^(headwater_[a-z_]+)(?:\{(.*)\})? (\S+)$")


def scrape(s: Settings) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """The worker's headwater_* samples: name -> {labels -> value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{s.web_port}/metrics",
                                  timeout=10).read().decode()
    out: dict[str, dict[frozenset[tuple[str, str]], float]] = defaultdict(dict)
    for line in text.splitlines():
        if m := SAMPLE.match(line):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[m.group(1)][labels] = float(m.group(3))
    return out


def value(samples: dict[frozenset[tuple[str, str]], float], **labels: str) -> float:
    """The sum of the samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for k, v in samples.items() if want <= k)


async def send_bad(s: Settings) -> None:
    p = AIOKafkaProducer(bootstrap_servers=s.bootstrap)
    await p.start()
    try:
        for i in range(BAD):
            await p.send_and_wait(s.topic("sensor-events"), b"not json %d" % i,
                                  headers=headers(JSON, "sensor-event.v1"))
    finally:
        await p.stop()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"curate_budget": "5%", "curate_window": "1d",
                                       "learn_report_s": 0.5, "learn_idle_flush_ms": 1000})


def test_metrics_during_a_replay_agree_with_the_topics(settings: Settings,
                                                       worker: Worker) -> None:
    s = settings
    events = shuttle(limit=EVENTS)
    producing = threading.Thread(target=lambda: asyncio.run(produce_table(
        s, events, s.topic("sensor-events"), rate=1000, chunk=200, labels_delay_ms=60_000)))
    producing.start()
    try:
        wait_for(lambda: value(scrape(s)["headwater_events_total"], agent="infer") > 0, 60,
                 "infer to count its first events")
        during = scrape(s)
    finally:
        producing.join()
    assert value(during["headwater_events_total"], agent="infer") < EVENTS  # mid-replay
    asyncio.run(send_bad(s))
    wait_for(lambda: asyncio.run(caught_up(s)), 120, "the worker to commit every input",
             detail=lambda: asyncio.run(behind(s)))
    wait_for(lambda: asyncio.run(curate_done(s)), 120, "curate to commit every prediction",
             detail=lambda: asyncio.run(curate_behind(s)))
    head = "shuttle-head"
    wait_for(lambda: value(scrape(s)["headwater_head_labels_total"], head=head,
                           outcome="learned") == EVENTS, 120, "every label learned")
    # the learned version is set when the head is published, on the snapshot clock
    wait_for(lambda: value(scrape(s)["headwater_head_version"], head=head,
                           role="learned") == EVENTS, 30, "the head published with every label",
             detail=lambda: scrape(s)["headwater_head_version"])
    # lag gauges follow on their own timers: wait until every one reads 0
    wait_for(lambda: (lag := scrape(s)["headwater_consumer_lag"]) and max(lag.values()) == 0,
             60, "every consumer lag at 0", detail=lambda: scrape(s)["headwater_consumer_lag"])
    m = scrape(s)
    assert worker.running()

    for agent in ("featurize", "infer", "curate"):
        assert value(m["headwater_events_total"], agent=agent) == EVENTS, agent
    # ingest counts the events and their labels
    assert value(m["headwater_events_total"], agent="ingest") == 2 * EVENTS
    assert value(m["headwater_dead_letters_total"], agent="ingest", reason="not-json") == BAD
    letters = asyncio.run(read_all(s, s.topic("dead-letters")))
    assert value(m["headwater_dead_letters_total"]) == len(letters) == BAD
    for agent in ("ingest", "infer"):
        assert value(m["headwater_batch_rows_count"], agent=agent) > 0, agent
    assert value(m["headwater_batch_rows_sum"], agent="infer") == EVENTS
    for stage in ("decode", "ingest", "featurize", "infer", "learn", "curate"):
        assert value(m["headwater_stage_seconds_count"], stage=stage) > 0, stage
        assert value(m["headwater_stage_seconds_sum"], stage=stage) > 0, stage
    assert 0 < value(m["headwater_end_to_end_seconds_count"]) <= EVENTS

    groups = {dict(k)["group"] + "/" + dict(k)["topic"] for k in m["headwater_consumer_lag"]}
    for group, topic in ((f"{s.app_id}-ingest", "sensor-events"),
                         (s.app_id, "sensor-batches"), (s.app_id, "features"),
                         (f"{s.app_id}-curate", "predictions")):
        assert f"{group}/{s.topic(topic)}" in groups, (group, topic, groups)

    curated = asyncio.run(read_all(s, s.topic("curation")))
    assert value(m["headwater_curated_total"], model="shuttle") == len(curated) > 0
    use = value(m["headwater_curation_budget_use"], model="shuttle", slice="rest")
    assert 0.5 < use <= 1.0 + 1e-9, use

    assert value(m["headwater_model_version"], model="shuttle") == 1
    assert value(m["headwater_head_version"], head=head, role="learned") == EVENTS
    preq = {dict(k)["metric"]: v for k, v in m["headwater_prequential"].items()
            if dict(k)["head"] == head and dict(k)["window"] == "cumulative"}
    assert preq and all(math.isfinite(v) for v in preq.values()), preq
    assert 0.5 < preq["accuracy"] <= 1.0, preq
    alerts = asyncio.run(read_all(s, s.topic("alerts")))
    assert frozenset({("head", head)}) in m["headwater_drift_alerts_total"]
    assert value(m["headwater_drift_alerts_total"], head=head) == len(alerts)
    assert all(orjson.loads(v)["name"] == head for _, _, v in alerts)
