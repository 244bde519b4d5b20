"""One event's whole journey on the real broker: sensor-events to predictions.

10,000 shuttle events with 100 malformed messages mixed in: exactly 10,000 predictions,
one per event id, and exactly 100 dead letters naming their offsets and reasons.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import subprocess
import sys
import urllib.request

import orjson
import pyarrow as pa
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from models.datasets import shuttle
from schemas.codec import write_ipc
from schemas.events import ARROW
from streams.produce import sensor_json
from streams.settings import Settings
from tests.conftest import ROOT, Worker, settings_env
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

GOOD = 10_000
JSON_H = [("content-type", b"application/json"), ("schema", b"sensor-event.v1")]


def malformed(i: int) -> tuple[bytes | None, list[tuple[str, bytes]], str]:
    """The i-th bad message: value, headers, and the reason the worker must give."""
    ok = {"event_id": f"bad-{i}", "sensor_id": "shuttle-0", "event_time": 1,
          "readings": {"f1": 1.0}}
    arrow_nan = pa.table({"event_id": [f"bad-{i}"], "sensor_id": ["shuttle-0"],
                          "event_time": pa.array([1], pa.int64()),
                          "readings.f1": [math.nan]})
    arrow_h = [("content-type", ARROW.encode()), ("schema", b"sensor-event.v1")]
    cases: list[tuple[bytes | None, list[tuple[str, bytes]], str]] = [
        (b"{not json", JSON_H, "not-json"),
        (b"", JSON_H, "empty-value"),
        (None, JSON_H, "empty-value"),
        (b"[1, 2]", JSON_H, "not-an-object"),
        (orjson.dumps({k: v for k, v in ok.items() if k != "sensor_id"}), JSON_H,
         "missing-field"),
        (orjson.dumps({**ok, "event_time": "yesterday"}), JSON_H, "wrong-type"),
        (orjson.dumps({**ok, "readings": {"f1": "hot"}}), JSON_H, "wrong-type"),
        (b'{"event_id":"x","sensor_id":"s","event_time":1,"readings":{"f1":NaN}}', JSON_H,
         "not-json"),
        (orjson.dumps(ok), [("content-type", b"application/json"),
                            ("schema", b"sensor-event.v9")], "unknown-schema"),
        (write_ipc(arrow_nan), arrow_h, "non-finite"),
        (write_ipc(arrow_nan)[:40], arrow_h, "bad-arrow"),
    ]
    return cases[i % len(cases)]


async def produce_mixed(s: Settings) -> dict[tuple[int, int], str]:
    """Send the good events and the bad messages interleaved; return bad (partition, offset)."""
    events = shuttle(limit=GOOD, sensors=4)
    values = sensor_json(events)
    keys = events.column("sensor_id").to_pylist()
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=5)
    await producer.start()
    bad: dict[tuple[int, int], str] = {}
    try:
        futures = []
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            futures.append(await producer.send(s.topic("sensor-events"), v, key=k.encode(),
                                               headers=JSON_H))
            if i % 100 == 50:
                value, headers, reason = malformed(i // 100)
                meta = await (await producer.send(s.topic("sensor-events"), value,
                                                  key=k.encode(), headers=headers))
                bad[(meta.partition, meta.offset)] = reason
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return bad


async def read_all(s: Settings, topic: str) -> list[tuple[int, int, bytes]]:
    """Every message now in `topic`: (partition, offset, value), in offset order per
    partition. (`earliest`: with aiokafka's default `latest`, the reset of a newly
    assigned partition could race the seek to its beginning and read nothing.)"""
    c = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(s.partitions)]
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        end = await c.end_offsets(parts)
        out: list[tuple[int, int, bytes]] = []
        while [tp for tp in parts if await c.position(tp) < end[tp]]:
            for tp, recs in (await c.getmany(timeout_ms=500)).items():
                out += [(tp.partition, r.offset, r.value) for r in recs]
        return out
    finally:
        await c.stop()


async def behind(s: Settings) -> list[str]:
    """The input partitions that ingest, featurize and infer have not committed to the end,
    as "group topic:partition committed/end"; empty when every input is committed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
    c = AIOKafkaConsumer(bootstrap_servers=s.bootstrap)
    await admin.start()
    await c.start()
    try:
        out = []
        for group, topic in [(f"{s.app_id}-ingest", "sensor-events"),
                             (f"{s.app_id}-ingest", "engagement-events"),
                             (s.app_id, "sensor-batches"), (s.app_id, "engagement-batches"),
                             (s.app_id, "features")]:
            parts = [TopicPartition(s.topic(topic), p) for p in range(s.partitions)]
            end = await c.end_offsets(parts)
            done = await admin.list_consumer_group_offsets(group)
            for tp in parts:
                committed = done[tp].offset if tp in done else 0
                if committed < end[tp]:
                    out.append(f"{group} {topic}:{tp.partition} {committed}/{end[tp]}")
        return out
    finally:
        await c.stop()
        await admin.close()


async def caught_up(s: Settings) -> bool:
    """True when ingest, featurize and infer have committed everything in their inputs."""
    return not await behind(s)


def test_events_become_predictions_and_bad_input_dead_letters(settings: Settings,
                                                              worker: Worker) -> None:
    s = settings
    bad = asyncio.run(produce_mixed(s))
    assert len(bad) == 100

    wait_for(lambda: asyncio.run(caught_up(s)), 120, "the worker to commit every input",
             detail=lambda: asyncio.run(behind(s)))

    predictions = [orjson.loads(v) for _, _, v in asyncio.run(read_all(s, s.topic("predictions")))]
    ids = [p["event_id"] for p in predictions]
    assert len(ids) == GOOD
    assert set(ids) == set(shuttle(limit=GOOD).column("event_id").to_pylist())
    assert all(0.0 <= p["probability"] <= 1.0 for p in predictions)
    assert {p["model_version"] for p in predictions} == {1}
    assert all(p["predict_time"] >= p["ingest_time"] >= p["source_time"] for p in predictions)

    letters = [orjson.loads(v) for _, _, v in asyncio.run(read_all(s, s.topic("dead-letters")))]
    assert len(letters) == 100
    got = {(d["source_partition"], d["source_offset"]): d["reason"] for d in letters}
    assert got == bad
    assert all(d["source_topic"] == s.topic("sensor-events") and d["agent"] == "ingest"
               for d in letters)
    empty = [d for d in letters if d["reason"] == "empty-value"]
    assert all(base64.b64decode(d["raw_b64"]) == b"" for d in empty)

    assert worker.running()
    url = f"http://127.0.0.1:{s.web_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    counted = sum(float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("headwater_dead_letters_total{"))
    assert counted == 100
    assert metric(text, 'headwater_model_version{model="shuttle"}') == 1
    assert metric(text, "headwater_end_to_end_seconds_count") > 0
    assert metric(text, 'headwater_events_total{agent="infer"}') == GOOD
    assert metric(text, 'headwater_events_total{agent="ingest"}') == GOOD

    def logged() -> int:
        found = re.findall(rb"dead letters since last summary: (\d+)", worker.log.read_bytes())
        return sum(int(n) for n in found)

    wait_for(lambda: logged() >= 100, 30, "the dead-letter summary in the worker log")
    assert logged() == 100
    records = [orjson.loads(line) for line in worker.log.read_bytes().splitlines()
               if line.startswith(b'{"ts":')]
    assert any("Worker ready" in r["msg"] for r in records)
    assert {"ts", "level", "logger", "msg"} <= set(records[0])

    health = orjson.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{s.web_port}/health", timeout=10).read())
    ready = orjson.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{s.web_port}/ready", timeout=10).read())
    assert health["status"] == "ok"
    assert ready["ready"] is True and ready["models"] == {"sensor.v2": "shuttle v1"}
    assert sorted(ready["ingest_partitions"]) == list(range(s.partitions))
    status = subprocess.run([sys.executable, "-m", "streams.cli", "status"], cwd=ROOT,
                            env=settings_env(s), capture_output=True, text=True, timeout=120,
                            check=False)
    assert status.returncode == 0, status.stderr
    assert '"ready":true' in status.stdout.replace(" ", "")


def metric(text: str, name: str) -> float:
    """The value of one sample line of a Prometheus text page."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not on /metrics")


def test_batches_written_straight_to_sensor_batches_are_checked(settings: Settings,
                                                                worker: Worker) -> None:
    """A batching producer may skip ingest; featurize then checks what it was given."""
    s = settings
    events = shuttle(limit=52).drop_columns(["label"])
    f1 = events.column("readings.f1").to_pylist()
    f1[10] = math.inf
    ids = events.column("event_id").to_pylist()
    ids[20] = None
    events = events.set_column(events.schema.get_field_index("readings.f1"), "readings.f1",
                               pa.array(f1)).set_column(0, "event_id", pa.array(ids, pa.string()))
    arrow_h = [("content-type", ARROW.encode()), ("schema", b"sensor-event.v1")]

    async def send() -> None:
        p = AIOKafkaProducer(bootstrap_servers=s.bootstrap)
        await p.start()
        try:
            await p.send_and_wait(s.topic("sensor-batches"), write_ipc(events), partition=1,
                                  headers=arrow_h)
            await p.send_and_wait(s.topic("sensor-batches"), b"not arrow", partition=1,
                                  headers=arrow_h)
        finally:
            await p.stop()

    asyncio.run(send())
    wait_for(lambda: asyncio.run(caught_up(s)), 120, "the worker to commit every input",
             detail=lambda: asyncio.run(behind(s)))
    predictions = [orjson.loads(v) for _, _, v in asyncio.run(read_all(s, s.topic("predictions")))]
    assert sorted(p["event_id"] for p in predictions) == sorted(
        i for n, i in enumerate(ids) if n not in (10, 20))
    assert all(p["source_time"] is not None for p in predictions)
    letters = [orjson.loads(v) for _, _, v in asyncio.run(read_all(s, s.topic("dead-letters")))]
    got = sorted((d["agent"], d["reason"], d["source_row"]) for d in letters)
    assert got == [("featurize", "bad-arrow", None), ("featurize", "invalid-row", 20),
                   ("featurize", "non-finite", 10)]
    assert {d["source_topic"] for d in letters} == {s.topic("sensor-batches")}
    assert worker.running()
