"""The learn stage's handling of training messages, without a broker: labels it cannot
learn are dead-lettered with the coordinates of the label they came from, and a
message it cannot read never stops it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.codec import write_ipc
from schemas.label_codec import LABEL_BATCH
from streams.infer import QUESTION_HEADERS
from streams.learn import FLUSH_HEADERS, LABEL_BATCH_HEADERS, Learn
from streams.settings import Settings
from tests.fakes import RecordingOutbox


@dataclass
class Record:
    value: bytes
    headers: list[tuple[str, bytes]]
    offset: int
    topic: str = "t-training"
    partition: int = 0
    key: bytes | None = None


def labels(*rows: tuple[str, float, int, str | None, int], weight: int | None = None
           ) -> bytes:
    """label batch rows: (event id, value, label time, model, source offset)."""
    return write_ipc(pa.RecordBatch.from_pylist([
        {"event_id": e, "value": v, "source": "outcome", "label_time": t, "model": m,
         "weight": weight, "source_partition": 2, "source_offset": o, "ingest_time": 0}
        for e, v, t, m, o in rows], schema=LABEL_BATCH))


def questions(ids: list[str], times: list[int]) -> bytes:
    n = len(ids)
    t = pa.table({"event_id": ids, "entity_id": ["s"] * n, "event_time": times,
                  "f.last": pa.array(np.linspace(0, 1, n), pa.float32()),
                  "deep_score": pa.array(np.linspace(0.1, 0.9, n))},
                 metadata={"model": "shuttle", "family": "sensor"})
    return write_ipc(t)


def learner() -> tuple[Learn, RecordingOutbox]:
    outbox = RecordingOutbox()
    learn = Learn(Settings(topic_prefix="t-", head_horizon="1s", drift_detector="none"),
                  outbox, {"shuttle": "sensor"})  # type: ignore[arg-type]
    learn.trainers = {"shuttle": learn._fresh("shuttle", "sensor")}
    return learn, outbox


def run(learn: Learn, *records: Record) -> None:
    async def go() -> None:
        for r in records:
            await learn.handle(r)
    asyncio.run(go())


def dead(outbox: RecordingOutbox) -> list[tuple[str, str, int, int]]:
    return [(a, r.reason, p, o) for a, r, p, o in outbox.dead]


def test_questions_then_labels_are_learned_in_order() -> None:
    learn, outbox = learner()
    run(learn, Record(questions(["a", "b", "c"], [0, 10, 20]), QUESTION_HEADERS, 0),
        Record(labels(("a", 1, 5, None, 7), ("b", 0, 15, None, 8)), LABEL_BATCH_HEADERS, 1),
        Record(b"{}", FLUSH_HEADERS, 2))
    assert learn.trainers is not None
    head = learn.trainers["shuttle"].head
    assert head.updates == 2 and head.counts["asked"] == 3
    assert learn.offset == 3 and outbox.dead == []
    assert learn.trainers["shuttle"].names == ("f.last", "deep_score")


def test_a_label_is_learned_as_many_times_as_its_weight() -> None:
    seen = {}
    for weight in (None, 1, 4):  # None: a batch from before labels had a weight
        learn, _ = learner()
        run(learn, Record(questions(["a", "b"], [0, 10]), QUESTION_HEADERS, 0),
            Record(labels(("a", 1, 5, None, 7), weight=weight), LABEL_BATCH_HEADERS, 1),
            Record(b"{}", FLUSH_HEADERS, 2))
        assert learn.trainers is not None
        head = learn.trainers["shuttle"].head
        assert head.updates == 1
        seen[weight] = head.model["StandardScaler"].counts["f.last"]  # rows the scaler saw
    assert seen == {None: 1, 1: 1, 4: 4}


def test_unlearnable_labels_are_dead_lettered_with_their_source_coordinates() -> None:
    learn, outbox = learner()
    run(learn, Record(questions(["a"], [0]), QUESTION_HEADERS, 0),
        Record(labels(("a", 2, 5, None, 40),          # not 0 or 1 for a classifier
                      ("x", 1, 6, "nope", 41),        # a model with no head
                      ("ghost", 1, 7, None, 42)),     # no such event
               LABEL_BATCH_HEADERS, 1),
        Record(b"{}", FLUSH_HEADERS, 2),
        Record(questions(["late"], [5_000]), QUESTION_HEADERS, 3),  # time moves on
        Record(b"{}", FLUSH_HEADERS, 4))
    assert sorted(dead(outbox)) == [
        ("learn", "bad-label-value", 2, 40), ("learn", "unknown-model", 2, 41),
        ("learn", "unmatched-label", 2, 42)]


def test_a_message_it_cannot_read_is_dead_lettered_and_learning_goes_on() -> None:
    learn, outbox = learner()
    good: list[Any] = [Record(questions(["a"], [0]), QUESTION_HEADERS, 1),
                       Record(labels(("a", 1, 5, None, 0)), LABEL_BATCH_HEADERS, 2),
                       Record(b"{}", FLUSH_HEADERS, 3)]
    run(learn, Record(b"not arrow", QUESTION_HEADERS, 0), *good)
    assert dead(outbox) == [("learn", "bad-training-message", 0, 0)]
    assert learn.trainers is not None and learn.trainers["shuttle"].head.updates == 1
