"""The infer step without a broker: predictions in input order, unscorable rows dead-lettered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.datasets import shuttle
from models.features import SensorConfig, sensor_features
from models.inference import BatchScorer
from models.registry import Registry
from schemas.codec import read_ipc
from streams.infer import chunks, infer_batch
from streams.serving import Served
from streams.settings import Settings
from tests.fakes import RecordingOutbox


def feature_table(n: int) -> pa.Table:
    events = shuttle(limit=n).drop_columns(["label"])
    events = events.append_column("source_time", pa.array([1] * n, pa.int64()))
    events = events.append_column("source_offset", pa.array(range(n), pa.int64()))
    events = events.append_column("ingest_time", events.column("event_time"))
    out, _, _ = sensor_features(events.combine_chunks().to_batches()[0], {}, SensorConfig())
    t = pa.Table.from_batches([out])
    return t.append_column("source_partition", pa.array([3] * n, pa.int32()))


def test_predictions_keep_input_order_and_bad_rows_go_to_dead_letters(
        registry_dir: Path) -> None:
    model = Registry(registry_dir).load("shuttle")
    t = feature_table(50)
    broken = t.column("f3.mean_1m").to_pylist()
    broken[7] = None
    t = t.set_column(t.schema.get_field_index("f3.mean_1m"), "f3.mean_1m", pa.array(broken))
    outbox = RecordingOutbox()
    s = Settings(topic_prefix="x-")

    async def run() -> None:
        await infer_batch(t, Served(model, BatchScorer(model.module, torch.device("cpu"))),
                          outbox, s)

    asyncio.run(run())
    ids = [orjson.loads(v)["event_id"] for topic, v, _ in outbox.sent
           if topic == "x-predictions"]
    want = [e for i, e in enumerate(t.column("event_id").to_pylist()) if i != 7]
    assert ids == want
    assert [(a, r.reason, p, o) for a, r, p, o in outbox.dead] == [
        ("infer", "missing-feature", 3, 7)]
    # and the scored rows, as the learn stage's questions: float32 features, deep score
    [question] = [read_ipc(v) for topic, v, _ in outbox.sent if topic == "x-training"]
    assert question.column("event_id").to_pylist() == want
    assert question.schema.field("f3.last").type == pa.float32()  # *.last,*.z_15m
    assert "f3.mean_1m" not in question.schema.names
    scored = [orjson.loads(v)["probability"] for topic, v, _ in outbox.sent
              if topic == "x-predictions"]
    assert question.column("deep_score").to_pylist() == scored


def test_micro_batches_merge_small_and_split_large() -> None:
    t = feature_table(10)
    pieces = chunks([t.slice(0, 3), t.slice(3, 0), t.slice(3, 7)], max_rows=4)
    assert [p.num_rows for p in pieces] == [4, 4, 2]
    assert pa.concat_tables(pieces).column("event_id").to_pylist() == \
        t.column("event_id").to_pylist()


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8),
                               st.floats(0, 1), st.floats(0, 1), st.integers(0, 2**45),
                               st.none() | st.integers(0, 2**45), st.integers(0, 2**45)),
                     min_size=1, max_size=20))
def test_column_wise_prediction_json_equals_orjson(
        rows: list[tuple[str, str, float, float, int, int | None, int]]) -> None:
    """The Arrow-built documents parse to exactly what a dict through orjson would give."""
    from schemas.predictions import predictions_json

    cols = list(zip(*rows, strict=True))
    t = pa.table({"event_id": pa.array(cols[0], pa.string()),
                  "entity_id": pa.array(cols[1], pa.string()),
                  "event_time": pa.array(cols[4], pa.int64()),
                  "source_time": pa.array(cols[5], pa.int64()),
                  "ingest_time": pa.array(cols[6], pa.int64())})
    docs = predictions_json(t, np.array(cols[2]), np.array(cols[3]), np.array(cols[3]) / 4,
                            ('m"x', 3), 42)
    want = [{"event_id": e, "entity_id": k, "item_id": None, "probability": p,
             "uncertainty": u, "variance": u / 4,
             "model_name": 'm"x', "model_version": 3, "head_version": None,
             "head_probability": None, "event_time": et,
             "source_time": st_, "ingest_time": it, "predict_time": 42,
             "features_partition": None, "features_offset": None}
            for e, k, p, u, et, st_, it in rows]
    assert [orjson.loads(d) for d in docs] == want
    assert all(isinstance(orjson.loads(d)["probability"], float) for d in docs)
