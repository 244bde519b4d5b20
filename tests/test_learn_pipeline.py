"""The learn stage on the real broker: Elec2 events and labels (2 hours late) through a
worker on a single-partition stream. The head's final prequential metrics, as the
worker publishes them on `metrics`, equal river's `evaluate.progressive_val_score` for
the same model, data and label delay, to 1e-9; infer serves the head's snapshots, whose
versions only move forward in offset order.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from aiokafka import AIOKafkaProducer
from river import compose, evaluate, metrics

from models.datasets import elec2
from models.features import sensor_features
from models.inference import collate
from models.online import build_learner
from models.registry import Registry
from models.training import train_sensor_model
from streams.produce import sensor_json
from streams.settings import Settings
from tests.conftest import Worker
from tests.test_engagement_pipeline import sample
from tests.test_pipeline import read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

N = 4000
DELAY_MS = 2 * 3_600_000  # four Elec2 periods
SPEC = "StandardScaler | LogisticRegression"
JSON_H = [("content-type", b"application/json"), ("schema", b"sensor-event.v1")]
LABEL_H = [("content-type", b"application/json"), ("schema", b"label.v1")]
CHECKPOINTS = 'headwater_stage_seconds_count{stage="learn-checkpoint"}'
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "elec2"


async def produce(s: Settings, events: pa.Table, labels_due_by: int | None = None,
                  labels_first: tuple[tuple[str, int, int], ...] = ()) -> None:
    """`labels_first` as JSON labels, then the events as JSON sensor events, then their
    labels (due `DELAY_MS` after each event; only those due by `labels_due_by`, when
    given)."""
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=5)
    await producer.start()

    async def send_labels(rows: list[tuple[str, int, int]]) -> None:
        for e, t, y in rows:
            label = {"event_id": e, "value": y, "source": "outcome", "label_time": t}
            await producer.send(s.topic("labels"), orjson.dumps(label), key=e.encode(),
                                headers=LABEL_H)

    try:
        await send_labels(list(labels_first))
        for v in sensor_json(events):
            await producer.send(s.topic("sensor-events"), v, key=b"elec2", headers=JSON_H)
        await send_labels([r for r in labels(events)
                           if labels_due_by is None or r[1] <= labels_due_by])
        await producer.flush()
    finally:
        await producer.stop()


def labels(events: pa.Table) -> list[tuple[str, int, int]]:
    return [(e, t + DELAY_MS, y) for e, t, y in zip(
        events.column("event_id").to_pylist(), events.column("event_time").to_pylist(),
        events.column("label").to_pylist(), strict=True)]


def serves_a_head(s: Settings) -> bool:
    """Whether the worker's infer serves a sensor head (False while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.web_port}/ready", timeout=5) as r:
            return "sensor" in orjson.loads(r.read())["heads"]
    except OSError:  # not listening yet, or 503 before it holds partitions
        return False


def final_report(s: Settings) -> dict[str, Any] | None:
    reports = [orjson.loads(v) for _, _, v in asyncio.run(read_all(s, s.topic("metrics")))]
    mine = [r for r in reports if r["name"] == "elec2-head"]
    return mine[-1] if mine else None


def river_reference(events: pa.Table, deep: dict[str, float], registry: Registry
                    ) -> dict[str, float]:
    """The same model on the same inputs, evaluated by river itself."""
    model = registry.load("elec2")
    batch = events.drop_columns(["label"]).combine_chunks().to_batches()[0]
    out, _, _ = sensor_features(batch, {}, Settings().sensor_features())
    x32, bad = collate(out, model.manifest)
    assert not bad.any()
    names = list(model.feature_names)
    ids = out.column("event_id").to_pylist()
    times = out.column("event_time").to_pylist()
    labels = dict(zip(events.column("event_id").to_pylist(),
                      events.column("label").to_pylist(), strict=True))
    rows = [({**dict(zip(names, x32[i].astype(np.float64).tolist(), strict=True)),
              "deep_score": deep[e], "t": times[i]}, bool(labels[e]))
            for i, e in enumerate(ids)]
    got = {}
    for key, metric in (("log_loss", metrics.LogLoss()), ("roc_auc", metrics.ROCAUC()),
                        ("accuracy", metrics.Accuracy())):
        score = evaluate.progressive_val_score(
            rows, compose.Discard("t") | build_learner(SPEC), metric, moment="t",
            delay=DELAY_MS)
        got[key] = float(score.get())
    return got


@pytest.mark.parametrize("crash", [False, True], ids=["steady", "kill-9-between-halves"])
def test_live_prequential_metrics_equal_rivers(settings: Settings, registry_dir: Path,
                                               tmp_path: Path, crash: bool) -> None:
    """With `crash`, the worker is killed with SIGKILL after the first half and restarted:
    the learner restores its last checkpoint and reads on from its offset, and the final
    metrics are still river's."""
    events = elec2(DATA, limit=N)
    registry = Registry(registry_dir)
    train_sensor_model(events, registry, "elec2", config=Settings().sensor_features(),
                       epochs=1, members=2)
    s = settings.model_copy(update={
        "partitions": 1, "sensor_model": "elec2", "head_spec": SPEC, "head_horizon": "30d",
        "sensor_head_features": "all",
        "drift_detector": "none", "learn_snapshot_s": 1.0, "learn_report_s": 0.5,
        "learn_idle_flush_ms": 1000, "learn_checkpoint_s": 0.5})
    worker = Worker(s, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        # the first half, and the labels due by its last event (so that what the learner
        # holds when it idles is what river holds at that point), then the rest once
        # infer serves a head
        half = events.slice(0, N // 2)
        last = half.column("event_time")[-1].as_py()
        asyncio.run(produce(s, half, labels_due_by=last))
        early = sum(1 for _, t, _ in labels(half) if t <= last)
        wait_for(lambda: (r := final_report(s)) is not None and r["labels"] == early, 240,
                 f"a report of the first {early} labels (log: {worker.log})", interval=0.5)
        wait_for(lambda: serves_a_head(s), 30, "infer serving the head")
        if crash:
            wait_for(lambda: sample(s, CHECKPOINTS) >= 1, 30, "a learner checkpoint")
            worker.kill()
            worker.restart()
            worker.wait_ready()
            wait_for(lambda: serves_a_head(s), 60, "infer serving the head again")
        rest = events.slice(N // 2)
        # the first half's late labels, then the second half with its labels
        asyncio.run(produce(s, rest, labels_first=tuple(r for r in labels(half) if r[1] > last)))
        wait_for(lambda: (r := final_report(s)) is not None and r["labels"] == N, 240,
                 f"a metrics report of all {N} labels (log: {worker.log})", interval=1.0)
        assert worker.running()
    finally:
        worker.stop()
    report = final_report(s)
    assert report is not None
    assert report["counts"]["unmatched"] == 0
    assert crash or report["counts"]["duplicate"] == 0  # a restart may replay questions

    predictions = [orjson.loads(v) for _, _, v in sorted(
        asyncio.run(read_all(s, s.topic("predictions"))))]
    deep = {p["event_id"]: p["probability"] for p in predictions}
    assert len(deep) == N  # every event predicted (once, when nothing crashed)
    assert crash or len(predictions) == N
    assert all(deep[p["event_id"]] == p["probability"] for p in predictions)
    want = river_reference(events, deep, registry)
    for key, value in want.items():
        assert abs(report["cumulative"][key] - value) <= 1e-9, (key, report["cumulative"], want)

    # infer served the head's snapshots as they came: the second half's predictions all
    # name a head version, and versions move forward only, in offset order
    second = {e for e in events.slice(N // 2).column("event_id").to_pylist()}
    assert all(p["head_version"] is not None for p in predictions if p["event_id"] in second)
    versions = [p["head_version"] for p in predictions if p["head_version"] is not None]
    assert versions == sorted(versions) and 0 < versions[0] <= versions[-1] <= N
    assert all(0 <= p["head_probability"] <= 1 for p in predictions
               if p["head_version"] is not None)
