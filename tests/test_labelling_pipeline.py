"""The label loop on the real broker: POST /labels on a real worker, and
`headwater labels import|export` as an operator runs them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from pydantic import SecretStr

from schemas.events import CurationSample
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import ROOT, Worker, settings_env
from tests.test_pipeline import read_all

pytestmark = pytest.mark.integration

TOKEN = f"labels-{uuid.uuid4().hex}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """conftest's settings with a labels token, so the worker fixture's worker has one."""
    return settings.model_copy(update={"labels_token": SecretStr(TOKEN)})


def post(s: Settings, body: bytes, auth: str | None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{s.web_port}/labels", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def listening_addresses(port: int) -> set[str]:
    """The local addresses something listens on at TCP `port` (Linux /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(address)
    return found


def label(event_id: str, value: float, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "value": value, "source": "human",
            "label_time": 1_714_644_930_123, **extra}


def keyed_by_event_id(s: Settings, got: list[tuple[int, int, bytes]]) -> bool:
    """Whether each label sits in the partition its event id's key sends it to."""
    parts = list(range(s.partitions))
    part = DefaultPartitioner()
    return all(p == part(orjson.loads(v)["event_id"].encode(), parts, parts)
               for p, _, v in got)


def test_post_labels_needs_the_token_and_is_all_or_nothing(settings: Settings,
                                                           worker: Worker) -> None:
    assert listening_addresses(settings.web_port) == {"0100007F"}  # 127.0.0.1 only
    topic = settings.topic("labels")
    good = [label("ev-1", 1), label("ev-2", 0.0, annotator="ann@example.com"),
            label("ev-3", 1, model="shuttle")]

    assert post(settings, orjson.dumps(good), None)[0] == 401
    status, body = post(settings, orjson.dumps(good), "Bearer not-the-token")
    assert status == 401 and TOKEN not in orjson.dumps(body).decode()

    bad = [label("ev-4", 1), {**label("ev-5", 1), "source": "robot"}, label("ev-6", "yes")]
    status, body = post(settings, orjson.dumps(bad), f"Bearer {TOKEN}")
    assert status == 400
    assert [e["index"] for e in body["errors"]] == [1, 2]
    assert asyncio.run(read_all(settings, topic)) == []  # nothing of it published

    status, body = post(settings, orjson.dumps(good), f"Bearer {TOKEN}")
    assert (status, body["published"]) == (202, 3)
    # 202 comes after the broker acknowledged: the labels are there now, and only they
    got = asyncio.run(read_all(settings, topic))
    assert sorted(orjson.loads(v)["event_id"] for _, _, v in got) == ["ev-1", "ev-2", "ev-3"]
    assert sorted(v for _, _, v in got) == sorted(orjson.dumps(x) for x in good)
    assert keyed_by_event_id(settings, got)

    with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/metrics") as r:
        metrics = r.read().decode()
    for outcome, n in [("unauthorized", 2), ("bad-request", 1), ("accepted", 1)]:
        assert f'headwater_label_requests_total{{outcome="{outcome}"}} {n}.0' in metrics
    assert TOKEN not in worker.log.read_text()


def cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", "labels", *args], cwd=ROOT,
                          env=settings_env(s), capture_output=True, text=True, timeout=120,
                          check=False)


def ls_task(event_id: str, choice: str, task_id: int) -> dict[str, Any]:
    """A task of a Label Studio JSON export, annotated with `choice`."""
    return {"id": task_id, "data": {"event_id": event_id, "entity_id": "shuttle-1"},
            "annotations": [{"id": task_id, "completed_by": 1, "was_cancelled": False,
                             "created_at": "2024-05-02T10:15:00.000000Z",
                             "updated_at": "2024-05-02T10:15:30.000000Z", "result": [
                                 {"id": "a1", "from_name": "label", "to_name": "event",
                                  "type": "choices", "value": {"choices": [choice]}}]}],
            "predictions": []}


def test_labels_import_publishes_a_good_export_and_refuses_a_bad_one(
        settings: Settings, tmp_path: Path) -> None:
    asyncio.run(ensure_topics(settings, ("labels",)))
    topic = settings.topic("labels")
    good = tmp_path / "good.json"
    good.write_bytes(orjson.dumps([ls_task("ev-1", "positive", 1),
                                   ls_task("ev-2", "negative", 2)]))
    done = cli(settings, "import", str(good))
    assert done.returncode == 0, done.stderr
    assert f"published 2 labels to {topic}" in done.stdout
    got = asyncio.run(read_all(settings, topic))
    assert {(orjson.loads(v)["event_id"], orjson.loads(v)["value"]) for _, _, v in got} == {
        ("ev-1", 1.0), ("ev-2", 0.0)}
    assert all(orjson.loads(v)["source"] == "human" for _, _, v in got)
    assert keyed_by_event_id(settings, got)

    mixed = tmp_path / "mixed.json"
    mixed.write_bytes(orjson.dumps([ls_task("ev-3", "positive", 3),
                                    ls_task("ev-4", "maybe", 4)]))
    done = cli(settings, "import", str(mixed))
    assert done.returncode == 1
    assert "task 1: ev-4: unknown choice 'maybe'" in done.stderr
    assert "nothing published" in done.stderr
    assert len(asyncio.run(read_all(settings, topic))) == 2

    done = cli(settings, "import", str(mixed), "--skip-bad")
    assert done.returncode == 1 and "published 1 labels" in done.stdout
    got = asyncio.run(read_all(settings, topic))
    assert sorted(orjson.loads(v)["event_id"] for _, _, v in got) == ["ev-1", "ev-2", "ev-3"]


async def publish_samples(s: Settings, samples: list[CurationSample]) -> None:
    """What the curate agent writes: one sample per message keyed by event id, and a
    message that is not a sample."""
    await ensure_topics(s, ("curation",))
    p = AIOKafkaProducer(bootstrap_servers=s.bootstrap)
    await p.start()
    try:
        for x in samples:
            await p.send_and_wait(s.topic("curation"), x.to_json(), key=x.event_id.encode(),
                                  headers=x.headers())
        await p.send_and_wait(s.topic("curation"), b"{not json", key=b"junk",
                              headers=samples[0].headers())
    finally:
        await p.stop()


def test_labels_export_writes_a_task_per_curation_sample(settings: Settings,
                                                         tmp_path: Path) -> None:
    samples = [CurationSample(f"ev-{i}", f"shuttle-{i % 3}", 0.5 + i / 100, 0.9, "uncertainty",
                              "near 0.5", 2, 1_388_534_460_000 + i, {"f1.last": float(i)})
               for i in range(12)]
    asyncio.run(publish_samples(settings, samples))
    out, config = tmp_path / "tasks.json", tmp_path / "labelling.xml"
    done = cli(settings, "export", "--out", str(out), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "exported 12 tasks" in done.stdout and "1 messages that are not" in done.stdout
    tasks = orjson.loads(out.read_bytes())
    assert sorted(t["data"]["event_id"] for t in tasks) == sorted(x.event_id for x in samples)
    assert config.read_text().startswith("<View>")

    missing = settings.model_copy(update={"topic_prefix": f"missing-{uuid.uuid4().hex[:6]}-"})
    done = cli(missing, "export", "--out", str(out))
    assert done.returncode == 1 and "does not exist" in done.stderr
