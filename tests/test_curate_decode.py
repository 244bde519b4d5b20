"""Curate reads Arrow predictions by column and a poll of JSON documents as typed
`Doc`s: the same columns, rows and choices as documents read one by one; a batch or poll
with a bad row is read row by row so the bad rows are named and the good ones kept."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from models.curation import Budget, Curator
from schemas.codec import write_ipc
from schemas.events import ARROW, JSON
from schemas.predictions import predictions_json
from streams.curate import decode_predictions

N = 500


class Rec:
    """A consumer record as curate sees one."""

    def __init__(self, value: bytes, offset: int, content_type: str) -> None:
        self.topic, self.partition, self.offset, self.key = "predictions", 1, offset, None
        self.value = value
        self.headers = [("content-type", content_type.encode())]


def features(n: int = N, first: int = 0) -> pa.Table:
    i = np.arange(first, first + n)
    return pa.table({"event_id": [f"e{k}" for k in i], "entity_id": [f"s{k % 7}" for k in i],
                     "event_time": pa.array(1_700_000_000_000 + i * 1000),
                     "source_time": pa.array(1_700_000_000_000 + i * 1000),
                     "ingest_time": pa.array(np.full(n, 1_700_000_000_500)),
                     "features_partition": pa.array(np.full(n, 1, np.int32)),
                     "features_offset": pa.array(i // 100),
                     "f1.last": pa.array(np.sin(i), pa.float32())})


def scores(n: int = N) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    p = rng.beta(0.5, 0.5, n)
    head = np.clip(p + rng.normal(0, 0.05, n), 0, 1)
    head[::5] = np.nan  # the head had not scored these
    return p, p * (1 - p), p * (1 - p) / 10, head


def as_arrow(t: pa.Table, p: np.ndarray, unc: np.ndarray, var: np.ndarray,
             head: np.ndarray) -> pa.Table:
    """The predictions table infer writes with HEADWATER_PREDICTIONS_FORMAT=arrow."""
    n = t.num_rows
    out = t.append_column("probability", pa.array(p)).append_column(
        "uncertainty", pa.array(unc)).append_column("variance", pa.array(var))
    out = out.append_column("model_version", pa.array([4] * n))
    out = out.append_column("head_probability", pa.array(head, pa.float64(), from_pandas=True))
    out = out.append_column("head_version", pa.array([9] * n, pa.int64()))
    out = out.append_column("predict_time", pa.array([1_700_000_001_000] * n))
    return out.replace_schema_metadata({b"model_name": b"shuttle"})


def test_arrow_predictions_read_by_column_equal_json_documents() -> None:
    t, (p, unc, var, head) = features(), scores()
    docs = predictions_json(t, p, unc, var, ("shuttle", 4), 1_700_000_001_000, (9, head))
    by_json, bad = decode_predictions([Rec(d, i, JSON) for i, d in enumerate(docs)])
    assert not bad
    arrow = as_arrow(t, p, unc, var, head)
    by_arrow, bad = decode_predictions([Rec(write_ipc(arrow.slice(0, 200)), 0, ARROW),
                                        Rec(write_ipc(arrow.slice(200)), 1, ARROW)])
    assert not bad
    a, j = by_arrow["shuttle"], by_json["shuttle"]
    assert a.table is not None and a.rows == [] and len(a) == len(j) == N
    assert a.where == [("predictions", 1, 0)] * 200 + [("predictions", 1, 1)] * 300
    ca, cj = a.columns(), j.columns()
    assert ca.keys() == cj.keys()
    for k in ca:
        assert np.array_equal(ca[k], cj[k], equal_nan=ca[k].dtype.kind == "f"), k
    for i in (0, 5, 499):
        row, doc = a.row(i), j.row(i)
        assert {k: row[k] for k in ("event_id", "features_partition", "features_offset",
                                    "model_version", "head_version", "event_time")} == \
            {k: doc[k] for k in ("event_id", "features_partition", "features_offset",
                                 "model_version", "head_version", "event_time")}
    pick = [Curator("least-confidence", Budget(fraction=0.05), seed=1).choose(c)
            for c in (ca, cj)]
    assert pick[0] == pick[1] and len(pick[0]) > 0


def test_an_arrow_batch_with_bad_rows_is_read_row_by_row() -> None:
    t, (p, unc, var, head) = features(10), scores(10)
    p[2] = 1.4
    arrow = as_arrow(t, p, unc, var, head)
    ids = arrow.column("event_id").to_pylist()
    ids[7] = ""
    arrow = arrow.set_column(0, "event_id", pa.array(ids))
    good = as_arrow(features(5, first=100), *scores(5))
    batches, bad = decode_predictions([Rec(write_ipc(arrow), 0, ARROW),
                                       Rec(write_ipc(good), 1, ARROW),
                                       Rec(b"\x00not arrow", 2, ARROW)])
    assert [(r.offset, why.reason, why.row) for r, why in bad] == [
        (2, "bad-arrow", None), (0, "bad-prediction", 2), (0, "bad-prediction", 7)]
    b = batches["shuttle"]
    assert b.table is not None and b.table.num_rows == 5  # the good batch, by column
    assert len(b.rows) == 8 and len(b) == 13
    assert [w[2] for w in b.where] == [1] * 5 + [0] * 8
    assert b.columns()["event_id"].tolist() == [f"e{k}" for k in range(100, 105)] + [
        f"e{k}" for k in range(10) if k not in (2, 7)]


def json_poll(n: int = N) -> list[bytes]:
    t, (p, unc, var, head) = features(n), scores(n)
    return predictions_json(t, p, unc, var, ("shuttle", 4), 1_700_000_001_000, (9, head))


def test_json_documents_read_typed_equal_the_ones_read_one_by_one() -> None:
    docs = json_poll()
    typed, bad = decode_predictions([Rec(d, i, JSON) for i, d in enumerate(docs)])
    assert not bad
    # one bad document makes the poll's documents read and checked one by one
    one_by_one, bad = decode_predictions([Rec(d, i, JSON) for i, d in enumerate(docs)]
                                         + [Rec(b"{", N, JSON)])
    assert [(r.offset, why.reason) for r, why in bad] == [(N, "not-json")]
    t, o = typed["shuttle"], one_by_one["shuttle"]
    assert len(t.docs) == N and t.rows == [] and o.docs == [] and len(o.rows) == N
    assert t.where == o.where == [("predictions", 1, i) for i in range(N)]
    ct, co = t.columns(), o.columns()
    assert ct.keys() == co.keys()
    for k in ct:
        assert ct[k].dtype == co[k].dtype, k
        assert np.array_equal(ct[k], co[k], equal_nan=ct[k].dtype.kind == "f"), k
    for i in (0, 5, N - 1):  # the fields `samples` reads
        row, doc = t.row(i), o.row(i)
        assert {k: row[k] for k in row if k in doc} == {k: doc[k] for k in row if k in doc}
        assert row["head_probability"] is None if i % 5 == 0 else row["head_probability"] >= 0


def test_a_poll_of_several_models_and_formats_keeps_row_order_and_coordinates() -> None:
    docs = json_poll(6)
    other = [d.replace(b'"model_name":"shuttle"', b'"model_name":"other"') for d in docs[:2]]
    arrow = as_arrow(features(3, first=50), *scores(3))
    batches, bad = decode_predictions([Rec(docs[2], 0, JSON), Rec(other[0], 1, JSON),
                                       Rec(write_ipc(arrow), 2, ARROW),
                                       Rec(docs[3], 3, JSON), Rec(other[1], 4, JSON)])
    assert not bad
    s = batches["shuttle"]
    assert [w[2] for w in s.where] == [2, 2, 2, 0, 3]  # the table's rows first
    assert s.columns()["event_id"].tolist() == ["e50", "e51", "e52", "e2", "e3"]
    assert [s.row(i)["event_id"] for i in range(5)] == ["e50", "e51", "e52", "e2", "e3"]
    o = batches["other"]
    assert [w[2] for w in o.where] == [1, 4] and o.columns()["event_id"].tolist() == ["e0", "e1"]


@pytest.mark.parametrize(("change", "reason"), [
    ((b'"probability":', b'"probability":1.4,"x":'), "probability: 1.4 is not in [0, 1]"),
    ((b'"probability":', b'"probability":true,"x":'), "probability: expected a finite number"),
    ((b'"probability":', b'"probability":null,"x":'), "probability: expected a finite number"),
    ((b'"head_probability":', b'"head_probability":-0.5,"x":'),
     "head_probability: -0.5 is not in [0, 1]"),
    ((b'"event_time":', b'"event_time":5.0,"x":'), "event_time: expected a 64-bit integer"),
    ((b'"model_version":4', b'"model_version":9223372036854775808'),
     "model_version: expected a 64-bit integer"),
    ((b'"features_offset":', b'"features_offset":-9223372036854775809,"x":'),
     "features_offset: expected a 64-bit integer"),
    ((b'"event_id":"e1"', b'"event_id":""'), "event_id: expected a non-empty string"),
    ((b'"model_name":"shuttle",', b''), "model_name: expected a non-empty string"),
    ((b'"uncertainty":', b'"uncertainty":"high","x":'), "uncertainty: expected a finite number"),
])
def test_each_rule_refuses_the_document_and_keeps_the_others(
        change: tuple[bytes, bytes], reason: str) -> None:
    docs = json_poll(4)
    assert change[0] in docs[1]
    docs[1] = docs[1].replace(*change)
    batches, bad = decode_predictions([Rec(d, i, JSON) for i, d in enumerate(docs)])
    assert [(r.offset, why.reason, why.detail) for r, why in bad] == [
        (1, "bad-prediction", reason)]
    assert batches["shuttle"].columns()["event_id"].tolist() == ["e0", "e2", "e3"]
