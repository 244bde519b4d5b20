"""The engagement model served beside the sensor model: every MovieLens rating gets one
prediction naming the user, the item and the model; feature batches of another version
or missing the model's features are dead-lettered, and the worker keeps serving."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from models.datasets import movielens
from models.registry import Registry
from models.training import train_engagement_model
from schemas.codec import write_ipc
from streams.outbox import Outbox
from streams.produce import produce_table
from streams.settings import Settings
from tests.conftest import Worker
from tests.data import shared
from tests.test_engagement_pipeline import sample
from tests.test_pipeline import behind, caught_up, read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVENTS = 3_000


async def send_features(s: Settings, table: pa.Table) -> None:
    outbox = Outbox(s)
    await outbox.start()
    try:
        await (await outbox.send(s.topic("features"), write_ipc(table), partition=0))
    finally:
        await outbox.stop()


def test_engagement_predictions_and_bad_feature_batches(settings: Settings,
                                                       tmp_path: Path) -> None:
    root = tmp_path / "registry"
    shutil.copytree(settings.registry_dir, root)
    events = movielens(shared("movielens-100k"), limit=EVENTS)
    train_engagement_model(events, Registry(root), "movielens",
                           config=settings.engagement_features(), epochs=1, buckets=1 << 10)
    s = settings.model_copy(update={"registry_dir": root, "engagement_model": "movielens"})
    worker = Worker(s, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        asyncio.run(produce_table(s, events, s.topic("engagement-events")))
        wait_for(lambda: asyncio.run(caught_up(s)), 120, "the worker to commit every input",
             detail=lambda: asyncio.run(behind(s)))
        predictions = [orjson.loads(v)
                       for _, _, v in asyncio.run(read_all(s, s.topic("predictions")))]
        assert sorted(p["event_id"] for p in predictions) == \
            sorted(events.column("event_id").to_pylist())
        items = dict(zip(events.column("event_id").to_pylist(),
                         events.column("item_id").to_pylist(), strict=True))
        assert all(p["item_id"] == items[p["event_id"]] for p in predictions)
        assert {(p["model_name"], p["model_version"]) for p in predictions} == {("movielens", 1)}
        assert all(0 <= p["variance"] <= 0.25 and 0 <= p["uncertainty"] <= 1
                   for p in predictions)
        assert len({p["probability"] for p in predictions}) > 100  # it scores, not a constant

        # a batch of another engagement feature-set version: dead-lettered whole
        wrong = pa.table({"event_id": ["w1"], "entity_id": ["u"], "item_id": ["i"],
                          "event_time": [1], "source_time": [1], "source_offset": [0],
                          "ingest_time": [1]}).replace_schema_metadata(
            {b"feature_set": b"engagement.v0", b"feature_names": b""})
        asyncio.run(send_features(s, wrong))
        # engagement.v1 without the model's features (a vector of the wrong length): each
        # row dead-lettered as missing-feature
        short = wrong.replace_schema_metadata({b"feature_set": b"engagement.v1",
                                               b"feature_names": b""})
        short = pa.concat_tables([short, short.set_column(0, "event_id", pa.array(["w2"]))])
        asyncio.run(send_features(s, short))

        def letters() -> list[dict[str, object]]:
            return [orjson.loads(v)
                    for _, _, v in asyncio.run(read_all(s, s.topic("dead-letters")))]

        wait_for(lambda: len(letters()) == 3, 60, "three dead letters from infer")
        assert sorted(d["reason"] for d in letters()) == \
            ["feature-set-mismatch", "missing-feature", "missing-feature"]
        mismatch = next(d for d in letters() if d["reason"] == "feature-set-mismatch")
        assert "engagement.v0" in mismatch["detail"] and mismatch["source_topic"] == \
            s.topic("features")
        assert sample(s, 'headwater_dead_letters_total{agent="infer",'
                         'reason="feature-set-mismatch"}') == 1
        assert worker.running()
    finally:
        worker.stop()
