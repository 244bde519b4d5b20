"""Real datasets as event tables in event-time order (no Kafka here).

The demo's dataset is NASA's shuttle sensor readings as packaged in the `river` wheel
(`river/datasets/shuttle.csv.gz`, UCI Statlog Shuttle in its ODDS anomaly form: nine
readings `f1`..`f9` and an `anomaly` label, about 7% positive). It has no timestamps, so
row order is event order, one second apart; rows are dealt round-robin to `sensors`
simulated sensors so that the stream spreads over partitions.

>>> t = shuttle(limit=5, sensors=2)
>>> t.column("sensor_id").to_pylist()
['shuttle-0', 'shuttle-1', 'shuttle-0', 'shuttle-1', 'shuttle-0']
>>> t.column("label").to_pylist()
[1, 0, 0, 0, 1]
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv

__all__ = ["DATASETS", "SHUTTLE_START_MS", "shuttle"]

SHUTTLE_START_MS = 1_388_534_400_000  # 2014-01-01T00:00:00Z, an arbitrary origin


def shuttle(limit: int | None = None, sensors: int = 4) -> pa.Table:
    """The shuttle dataset as sensor events: ids, event time, `readings.f1..f9`, label."""
    path = resources.files("river").joinpath("datasets", "shuttle.csv.gz")
    with path.open("rb") as f, gzip.open(f) as csv:
        raw = pv.read_csv(csv, read_options=pv.ReadOptions(use_threads=False))
    if limit is not None:
        raw = raw.slice(0, limit)
    n = raw.num_rows
    idx = np.arange(n)
    cols: dict[str, pa.Array] = {
        "event_id": pa.array([f"shuttle-{i:06d}" for i in idx]),
        "sensor_id": pa.array([f"shuttle-{i % sensors}" for i in idx]),
        "event_time": pa.array(SHUTTLE_START_MS + idx * 1000, pa.int64()),
    }
    for name in raw.schema.names:
        if name != "anomaly":
            cols[f"readings.{name}"] = raw.column(name).cast(pa.float64())
    cols["label"] = raw.column("anomaly").cast(pa.int8())
    return pa.table(cols)


DATASETS = {"shuttle": shuttle}
