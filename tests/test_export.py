"""`headwater export` on the real broker: a range to Parquet with every row once and its
Kafka coordinates, ranges by offset and by time, a resumed export, bad input refused."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaProducer

from schemas.codec import write_ipc
from schemas.events import ARROW, EngagementEvent, Label, SensorEvent, headers
from streams.broker import LocalKafka
from streams.export import ExportError, Range, read_export, read_range
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import ROOT, settings_env

pytestmark = pytest.mark.integration

DAY1 = 1_704_153_590_000  # 2024-01-01T23:59:50Z
DAY2 = 1_704_153_600_000  # 2024-01-02T00:00:00Z

#: (partition, key, value, headers, Kafka timestamp)
Message = tuple[int, bytes | None, bytes, list[tuple[str, bytes]], int]


@pytest.fixture
def hw(kafka: LocalKafka) -> Settings:
    """Settings with this test's own topics (two partitions each)."""
    tag = uuid.uuid4().hex[:8]
    return Settings(bootstrap=kafka.bootstrap, topic_prefix=f"x{tag}-", app_id=f"hw-{tag}",
                    partitions=2)


async def send(s: Settings, name: str, messages: list[Message]) -> list[tuple[int, int]]:
    """Send `messages` to topic `name` in order; their (partition, offset)."""
    await ensure_topics(s, (name,))
    p = AIOKafkaProducer(bootstrap_servers=s.bootstrap)
    await p.start()
    try:
        futures = [await p.send(s.topic(name), value, key=key, partition=part, headers=hs,
                                timestamp_ms=ts) for part, key, value, hs, ts in messages]
        done = [await f for f in futures]
        return [(m.partition, m.offset) for m in done]
    finally:
        await p.stop()


def cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", "export", *args], cwd=ROOT,
                          env=settings_env(s), capture_output=True, text=True, timeout=180,
                          check=False)


def sensor_messages(n: int, t0: int = DAY1) -> list[Message]:
    out: list[Message] = []
    for i in range(n):
        e = SensorEvent(f"e{i:04d}", f"s{i % 4}", 1_000 + i, {"a": float(i), "b": i / 2})
        hs = e.headers() + ([("trace", f"t{i}".encode())] if i % 3 == 0 else [])
        out.append((i % 2, e.sensor_id.encode(), e.to_json(), hs, t0 + i * 1000))
    return out


def test_export_writes_each_row_once_with_its_coordinates(hw: Settings, tmp_path: Path
                                                          ) -> None:
    events = sensor_messages(20)  # 10 on 2024-01-01, 10 on 2024-01-02
    arrow = pa.table({"event_id": ["b0", "b1", "b2"], "sensor_id": ["s9"] * 3,
                      "event_time": [5, -1, 7], "readings.a": [1.0, 2.0, 3.0],
                      "readings.c": [0.5, None, 1.5]})
    extra: list[Message] = [
        (0, None, write_ipc(arrow), headers(ARROW, "sensor-event.v1"), DAY2 + 100),
        (1, b"bad", b"{not json", headers("application/json", "sensor-event.v1"), DAY2 + 200),
        (1, b"s0", SensorEvent("plain", "s0", 9, {"a": 1.0}).to_json(), [], DAY2 + 300),
    ]
    sent = asyncio.run(send(hw, "sensor-events", events + extra))
    out = tmp_path / "out"
    done = cli(hw, "sensor-events", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "exported 23 rows from 23 messages" in done.stdout, done.stdout
    assert "2 rejected" in done.stdout and "complete" in done.stdout

    rows = read_export(out / "sensor-events").to_pylist()
    expected = []
    for (part, key, value, hs, ts), (p, offset) in zip(events + extra, sent, strict=True):
        coords = {"kafka_topic": hw.topic("sensor-events"), "kafka_partition": p,
                  "kafka_offset": offset, "kafka_timestamp": ts, "kafka_key": key,
                  "kafka_headers": [{"key": k, "value": v} for k, v in hs]}
        assert p == part
        if value.startswith(b"{not"):
            continue
        if hs and hs[0][1] == ARROW.encode():
            expected += [{"event_id": "b0", "event_time": 5, "readings.a": 1.0,
                          "readings.c": 0.5, **coords},
                         {"event_id": "b2", "event_time": 7, "readings.a": 3.0,
                          "readings.c": 1.5, **coords}]
            continue
        d = orjson.loads(value)
        expected.append({"event_id": d["event_id"], "event_time": d["event_time"],
                         **{f"readings.{k}": v for k, v in d["readings"].items()}, **coords})
    expected.sort(key=lambda r: (r["kafka_partition"], r["kafka_offset"]))
    assert [{k: r[k] for k in e} for r, e in zip(rows, expected, strict=True)] == expected
    assert all(r["source_offset"] == r["kafka_offset"] and r["source_time"] ==
               r["kafka_timestamp"] == r["ingest_time"] for r in rows)
    assert rows[0].get("readings.c") is None and rows[0]["readings.b"] == 0.0

    data = ds.dataset(out / "sensor-events", partitioning="hive").to_table()
    assert data.num_rows == 23
    by_date = {d: data.filter(pa.compute.equal(data["date"], d)).num_rows
               for d in ("2024-01-01", "2024-01-02")}
    assert by_date == {"2024-01-01": 10, "2024-01-02": 13}

    rejected = pq.read_table(out / "sensor-events" / "_rejected").to_pylist()
    assert sorted((r["reason"], r["kafka_partition"], r["kafka_offset"], r["row"], r["raw"],
                   r["kafka_key"]) for r in rejected) == sorted([
        ("invalid-row", 0, sent[20][1], 1, extra[0][2], None),
        ("not-json", 1, sent[21][1], None, b"{not json", b"bad")])


def test_ranges_by_offset_and_by_time(hw: Settings) -> None:
    t0 = DAY1
    msgs: list[Message] = []
    for i in range(10):
        e = EngagementEvent(f"p0-{i}", "u1", f"i{i}", 100 + i, "click", category="Drama")
        msgs.append((0, b"u1", e.to_json(), e.headers(), t0 + i * 1000))
    for i in range(5):
        e = EngagementEvent(f"p1-{i}", "u2", f"i{i}", 200 + i, "rating", value=4)
        msgs.append((1, b"u2", e.to_json(), e.headers(), t0 + 500 + i * 1000))
    asyncio.run(send(hw, "engagement-events", msgs))

    def ids(spec: Range) -> list[tuple[str, int]]:
        return [(r["event_id"], r["kafka_offset"]) for t in read_range(hw, "engagement-events",
                                                                        spec)
                for r in t.to_pylist()]

    assert ids(Range(partitions=(0,), start_offset=3, end_offset=7)) == [
        (f"p0-{i}", i) for i in range(3, 7)]
    got = ids(Range(start_time=t0 + 2000, end_time=t0 + 5000))  # [2 s, 5 s)
    assert sorted(got) == sorted([(f"p0-{i}", i) for i in (2, 3, 4)]
                                 + [(f"p1-{i}", i) for i in (2, 3, 4)])
    assert sorted(ids(Range(partitions=(1,), start_time=t0 + 4000))) == [("p1-4", 4)]
    rows = [r for t in read_range(hw, "engagement-events", Range(partitions=(0,), end_offset=1))
            for r in t.to_pylist()]
    assert [(r["user_id"], r["item_id"], r["kind"], r["value"], r["category"]) for r in rows] \
        == [("u1", "i0", "click", 1.0, "Drama")]


def test_labels_batches_and_json_topics_are_read(hw: Settings) -> None:
    labels = [Label(f"e{i}", float(i % 2), "outcome", 50 + i) for i in range(3)]
    asyncio.run(send(hw, "labels", [(0, x.event_id.encode(), x.to_json(), x.headers(), DAY1)
                                    for x in labels]
                     + [(0, b"e9", b'{"event_id":"e9"}', [], DAY1)]))
    bad: list[pa.Table] = []
    rows = [r for t in read_range(hw, "labels", Range(), rejected=bad.append)
            for r in t.to_pylist()]
    assert [(r["event_id"], r["value"], r["label_time"]) for r in rows] == [
        ("e0", 0.0, 50), ("e1", 1.0, 51), ("e2", 0.0, 52)]
    assert [(r["kafka_offset"], r["reason"]) for t in bad for r in t.to_pylist()] == [
        (3, "wrong-type")]

    batch = pa.table({"event_id": ["a", "b"], "sensor_id": ["s", "s"], "event_time": [1, 2],
                      "readings.x": [1.0, 2.0], "source_offset": [40, 41]})
    asyncio.run(send(hw, "sensor-batches", [(1, None, write_ipc(batch),
                                             headers(ARROW, "sensor-event.v1"), DAY2)]))
    rows = [r for t in read_range(hw, "sensor-batches", Range()) for r in t.to_pylist()]
    assert [(r["event_id"], r["source_offset"], r["kafka_offset"], r["kafka_partition"])
            for r in rows] == [("a", 40, 0, 1), ("b", 41, 0, 1)]

    docs = [{"event_id": "p", "probability": 0.25, "model_version": 3}]
    asyncio.run(send(hw, "predictions", [(0, b"s", orjson.dumps(d), [], DAY1) for d in docs]))
    rows = [r for t in read_range(hw, "predictions", Range()) for r in t.to_pylist()]
    assert [(r["event_id"], r["probability"], r["model_version"]) for r in rows] == [
        ("p", 0.25, 3)]


def test_an_interrupted_export_goes_on_without_duplicates(hw: Settings, tmp_path: Path
                                                           ) -> None:
    events = sensor_messages(300)
    asyncio.run(send(hw, "sensor-events", events))
    out = tmp_path / "out"
    root = out / "sensor-events"
    done = cli(hw, "sensor-events", "--out", str(out), "--limit", "50", "--rows-per-file", "20")
    assert done.returncode == 0, done.stderr
    assert "INCOMPLETE" in done.stdout, done.stdout
    with pytest.raises(ExportError, match="not complete"):
        read_export(root)
    first = read_export(root, partial=True)
    assert 50 <= first.num_rows < 300
    state = orjson.loads((root / "_export.json").read_bytes())
    nexts = {int(p): v["next"] for p, v in state["partitions"].items()}
    assert first.num_rows == sum(nexts.values())

    # what a run killed after closing a file but before recording it leaves behind
    p = next(p for p, n in nexts.items() if n < 150)
    any_file = next(root.glob("date=*/part-*.parquet"))
    shutil.copy(any_file, any_file.parent / f"part-{p}-{nexts[p]}.parquet")
    (any_file.parent / f".part-{p}-{nexts[p] + 1}.parquet.tmp").write_bytes(b"half")

    done = cli(hw, "sensor-events", "--out", str(out), "--rows-per-file", "20")
    assert done.returncode == 0, done.stderr
    assert "exported 300 rows from 300 messages" in done.stdout and "; complete" in done.stdout
    table = read_export(root)
    assert sorted(table.column("event_id").to_pylist()) == [f"e{i:04d}" for i in range(300)]
    for part in (0, 1):
        offsets = table.filter(pa.compute.equal(table["kafka_partition"], part))
        assert offsets.column("kafka_offset").to_pylist() == list(range(150))
    assert not list(root.glob("**/.*.tmp"))

    again = cli(hw, "sensor-events", "--out", str(out))
    assert again.returncode == 0 and "already complete: 300 rows" in again.stdout


def run_all(s: Settings, runs: dict[str, list[str]]) -> dict[str, tuple[int, str, str]]:
    """The export CLI once per entry, all at once: (exit code, stdout, stderr) by name."""
    procs = {name: subprocess.Popen([sys.executable, "-m", "streams.cli", "export", *args],
                                    cwd=ROOT, env=settings_env(s), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, args in runs.items()}
    results = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=180)
        results[name] = (p.returncode, stdout, stderr)
    return results


def test_bad_input_is_one_line_and_a_failure(hw: Settings, tmp_path: Path) -> None:
    asyncio.run(send(hw, "sensor-events", sensor_messages(4)))
    asyncio.run(ensure_topics(hw, ("labels",)))  # exists, empty
    out = tmp_path / "out"
    runs: dict[str, list[str]] = {
        f"topic {hw.topic('no-such-topic')} does not exist": ["no-such-topic"],
        f"no messages in range: {hw.topic('labels')}": ["labels"],
        f"no messages in range: {hw.topic('sensor-events')} partitions 0, 1 from offset 2 "
        "to offset 2": ["sensor-events", "--from-offset", "2", "--to-offset", "2"],
        "bad range: start offset 5 is after end offset 2": [
            "sensor-events", "--from-offset", "5", "--to-offset", "2"],
        "bad range: start time 1704153600000 is after end time 1704153590000": [
            "sensor-events", "--from-time", "2024-01-02T00:00:00Z",
            "--to-time", str(DAY1)],
        f"partition 7 of {hw.topic('sensor-events')} does not exist": [
            "sensor-events", "--partition", "0", "--partition", "7"],
        "bad time 'yesterday'": ["sensor-events", "--from-time", "yesterday"],
    }
    got = run_all(hw, {k: [*v, "--out", str(out)] for k, v in runs.items()})
    for problem, (code, stdout, stderr) in got.items():
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code != 0, (problem, stdout, stderr)
        assert len(lines) == 1 and lines[0].startswith("headwater: ") \
            and problem in lines[0], (problem, stderr)
    assert not out.exists() or not any(out.rglob("*.parquet"))
