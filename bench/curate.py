"""The curate stage's own rate, in process: predictions decoded and curated per second,
beside the ceiling of decoding them alone, measured in the same run, for both formats.

    python bench/curate.py [--events 200000] [--batch 4096] [--strategy least-confidence]

JSON: the documents infer writes (`schemas.predictions.predictions_json`), polled in
batches of `--batch` as the stage's consumer takes them, beside decoding them alone with
orjson (to dicts) and with msgspec (to the typed `streams.curate.Doc`, checked: what
curate does). Arrow (`HEADWATER_PREDICTIONS_FORMAT=arrow`): the batches infer writes, `--batch`
rows each, read by column, beside `read_ipc` alone (a zero-copy read: it bounds nothing,
it shows the decode is free). Timed: decode, check and columns
(`streams.curate.decode_predictions`), and the curator's choice at a 5% budget
(`models.curation.Curator`). Not timed: the broker, and reading the features of the
picks back (a few feature messages a second). Compare with the infer stage's rate
(bench/inference.py, README "Inference").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.curation import Budget, Curator  # noqa: E402
from schemas.codec import read_ipc, write_ipc  # noqa: E402
from schemas.events import ARROW, JSON  # noqa: E402
from schemas.predictions import predictions_json  # noqa: E402
from streams.curate import _DOC, decode_predictions  # noqa: E402


class Rec:
    """A consumer record as curate sees one."""

    __slots__ = ("headers", "key", "offset", "partition", "topic", "value")

    def __init__(self, value: bytes, offset: int, content_type: str = JSON) -> None:
        self.topic, self.partition, self.offset = "predictions", 0, offset
        self.key, self.value = None, value
        self.headers = [("content-type", content_type.encode()), ("schema", b"prediction.v1")]


def predictions(n: int) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Feature-table columns infer carries into predictions, the deep model's and the
    head's probabilities."""
    rng = np.random.default_rng(0)
    t = pa.table({"event_id": [f"ev-{i:08d}" for i in range(n)],
                  "entity_id": [f"sensor-{i % 64}" for i in range(n)],
                  "event_time": pa.array(1_700_000_000_000 + np.arange(n) * 10),
                  "source_time": pa.array(np.full(n, 1_700_000_000_000)),
                  "ingest_time": pa.array(np.full(n, 1_700_000_000_000)),
                  "features_partition": pa.array(np.zeros(n, np.int32)),
                  "features_offset": pa.array(np.arange(n) // 4096)})
    p = rng.beta(0.5, 0.5, n)
    return t, p, np.clip(p + rng.normal(0, 0.05, n), 0, 1)


def documents(n: int) -> list[bytes]:
    """Prediction JSON documents, one per event (HEADWATER_PREDICTIONS_FORMAT=json)."""
    t, p, head = predictions(n)
    return predictions_json(t, p, p * (1 - p), p * (1 - p) / 10, ("shuttle", 1), 0, (3, head))


def arrow_batches(n: int, rows: int) -> list[bytes]:
    """Prediction Arrow batches of `rows` each, as infer writes them (format arrow)."""
    t, p, head = predictions(n)
    out = t.append_column("probability", pa.array(p)).append_column(
        "uncertainty", pa.array(p * (1 - p))).append_column("variance", pa.array(p * (1 - p) / 10))
    for name, col in (("model_version", pa.array(np.ones(n, np.int64))),
                      ("head_probability", pa.array(head)),
                      ("head_version", pa.array(np.full(n, 3, np.int64))),
                      ("predict_time", pa.array(np.zeros(n, np.int64)))):
        out = out.append_column(name, col)
    out = out.replace_schema_metadata({b"model_name": b"shuttle"})
    return [write_ipc(out.slice(i, rows)) for i in range(0, n, rows)]


def curate_rate(polls: list[list[Rec]], strategy: str, events: int) -> tuple[float, int]:
    """Events/s of decode, check and choose at a 5% budget, and the number picked."""
    curator = Curator(strategy, Budget(fraction=0.05))
    picked = 0
    started = time.perf_counter()
    for poll in polls:
        batches, bad = decode_predictions(poll)
        assert not bad
        for b in batches.values():
            picked += len(curator.choose(b.columns()))
    return events / (time.perf_counter() - started), picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--strategy", default="least-confidence")
    a = ap.parse_args()
    docs = documents(a.events)
    records = [Rec(d, i) for i, d in enumerate(docs)]
    polls = [records[i:i + a.batch] for i in range(0, len(records), a.batch)]

    started = time.perf_counter()
    for poll in polls:
        for r in poll:
            orjson.loads(r.value)
    ceiling = a.events / (time.perf_counter() - started)
    started = time.perf_counter()
    for poll in polls:
        for r in poll:
            _DOC.decode(r.value)
    typed = a.events / (time.perf_counter() - started)
    rate, picked = curate_rate(polls, a.strategy, a.events)

    blobs = arrow_batches(a.events, a.batch)  # one message a batch: a poll of one
    arrow = [[Rec(b, i, ARROW)] for i, b in enumerate(blobs)]
    started = time.perf_counter()
    for (r,) in arrow:
        read_ipc(r.value)
    arrow_ceiling = a.events / (time.perf_counter() - started)
    arrow_rate, arrow_picked = curate_rate(arrow, a.strategy, a.events)

    print(f"{a.events:,} predictions in polls of {a.batch:,}, {a.strategy}, 5% budget "
          f"({picked:,} picked from JSON, {arrow_picked:,} from Arrow)")
    print(f"  orjson decode alone (to dicts):      {ceiling:>12,.0f} events/s")
    print(f"  msgspec decode alone (ceiling):      {typed:>12,.0f} events/s")
    print(f"  curate JSON (decode, check, choose): {rate:>12,.0f} events/s "
          f"({rate / typed:.2f} x the ceiling)")
    print(f"  Arrow read_ipc alone (ceiling):      {arrow_ceiling:>12,.0f} events/s")
    print(f"  curate Arrow (read, check, choose):  {arrow_rate:>12,.0f} events/s "
          f"({arrow_rate / arrow_ceiling:.2f} x the ceiling)")


if __name__ == "__main__":
    main()
