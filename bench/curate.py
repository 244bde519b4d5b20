"""The curate stage's own rate, in process: prediction documents decoded and curated per
second, beside the ceiling of decoding them alone (orjson), measured in the same run.

    python bench/curate.py [--events 200000] [--batch 4096] [--strategy least-confidence]

Predictions are the JSON documents infer writes (`schemas.predictions.predictions_json`),
polled in batches of `--batch` as the stage's consumer takes them; timed: decode, check
and columns (`streams.curate.decode_predictions`), and the curator's choice at a 5%
budget (`models.curation.Curator`). Not timed: the broker, and reading the features of
the picks back (a few feature messages a second). Compare with the infer stage's rate
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
from schemas.predictions import predictions_json  # noqa: E402
from streams.curate import decode_predictions  # noqa: E402


class Rec:
    """A consumer record as curate sees one."""

    __slots__ = ("headers", "key", "offset", "partition", "topic", "value")

    def __init__(self, value: bytes, offset: int) -> None:
        self.topic, self.partition, self.offset = "predictions", 0, offset
        self.key, self.value = None, value
        self.headers = [("content-type", b"application/json"), ("schema", b"prediction.v1")]


def documents(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    t = pa.table({"event_id": [f"ev-{i:08d}" for i in range(n)],
                  "entity_id": [f"sensor-{i % 64}" for i in range(n)],
                  "event_time": pa.array(1_700_000_000_000 + np.arange(n) * 10),
                  "source_time": pa.array(np.full(n, 1_700_000_000_000)),
                  "ingest_time": pa.array(np.full(n, 1_700_000_000_000)),
                  "features_partition": pa.array(np.zeros(n, np.int32)),
                  "features_offset": pa.array(np.arange(n) // 4096)})
    p = rng.beta(0.5, 0.5, n)
    return predictions_json(t, p, p * (1 - p), p * (1 - p) / 10, ("shuttle", 1), 0,
                            (3, np.clip(p + rng.normal(0, 0.05, n), 0, 1)))


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

    curator = Curator(a.strategy, Budget(fraction=0.05))
    picked = 0
    started = time.perf_counter()
    for poll in polls:
        batches, bad = decode_predictions(poll)
        assert not bad
        for b in batches.values():
            picked += len(curator.choose(b.columns()))
    rate = a.events / (time.perf_counter() - started)
    print(f"{a.events:,} predictions in polls of {a.batch:,}, {a.strategy}, 5% budget "
          f"({picked:,} picked)")
    print(f"  orjson decode alone (ceiling):  {ceiling:>12,.0f} events/s")
    print(f"  curate (decode, check, choose): {rate:>12,.0f} events/s "
          f"({rate / ceiling:.2f} x the ceiling)")


if __name__ == "__main__":
    main()
