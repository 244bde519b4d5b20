"""Candidate against production with `headwater replay`'s own code, on MovieLens 100K and
on a NAB series (bench/replay_candidates.py, tests/test_replay_candidates.py).

The deep models are trained offline on the first part of each stream; the stream and its
outcome labels are written to Parquet as `headwater export` gives them; `streams.replay.run`
compares the candidates side by side and writes the report (HTML, JSON, PNG).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from models.datasets import movielens, nab
from models.registry import Registry
from models.training import train_engagement_model, train_sensor_model
from streams.export import Range
from streams.produce import outcome_labels
from streams.replay import Candidate, run
from streams.settings import Settings

__all__ = ["HOUR", "NAB_SERIES", "labels_table", "movielens_candidates", "nab_candidates"]

HOUR = 3_600_000
NAB_SERIES = "machine_temperature_system_failure"


def labels_table(events: pa.Table, delay_ms: int) -> pa.Table:
    """The outcome labels `headwater produce --labels-delay` sends, as ingest decodes them.

    >>> t = pa.table({"event_id": ["a"], "event_time": [5], "label": [1]})
    >>> labels_table(t, 10).to_pylist()
    [{'event_id': 'a', 'value': 1, 'source': 'outcome', 'label_time': 15, 'model': None}]
    """
    rows = [{"event_id": e, "value": orjson.loads(raw)["value"], "source": "outcome",
             "label_time": t, "model": None} for t, e, raw in outcome_labels(events, delay_ms)]
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("event_id", pa.string()), ("value", pa.int64()), ("source", pa.string()),
        ("label_time", pa.int64()), ("model", pa.string())]))


def _parquet(t: pa.Table, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, path)
    return str(path)


def movielens_candidates(s: Settings, data: Path, work: Path, out: Path, *,
                         fractions: tuple[float, float] = (0.1, 0.2), epochs: int = 3,
                         every: int = 1000) -> str:
    """MovieLens 100K (label: rating >= 4, due 1 h after the rating): production = the
    engagement model trained on the first `fractions[0]` of the ratings, candidate = on
    the first `fractions[1]`; a third arm is production's deep model with a slower head
    (SGD 0.002). Trains into `s.registry_dir`; the report goes to `out`; returns the
    replay's one-line summary."""
    registry = Registry(s.registry_dir)
    ml = movielens(data / "movielens-100k")
    ml = ml.take(pc.sort_indices(ml, [("event_time", "ascending")]))
    versions = [train_engagement_model(ml.slice(0, int(ml.num_rows * f)), registry,
                                       config=s.engagement_features(), epochs=epochs, seed=0,
                                       device=torch.device("cpu")).version
                for f in fractions]
    return run(s, _parquet(ml, work / "ml.parquet"),
               _parquet(labels_table(ml, HOUR), work / "ml-labels.parquet"), Range(),
               [Candidate("production", "movielens", versions[0]),
                Candidate("candidate", "movielens", versions[1]),
                Candidate.parse(f"production-sgd0.002=movielens:{versions[0]}@StandardScaler"
                                " | LogisticRegression(optimizer=SGD(0.002))")],
               out, every=every)


def nab_candidates(s: Settings, data: Path, work: Path, out: Path, *,
                   epochs: tuple[int, int] = (2, 10), members: tuple[int, int] = (2, 5),
                   every: int = 500) -> str:
    """NAB machine_temperature_system_failure (22,695 readings; label: inside an anomaly
    window, due 1 h late): production and candidate are sensor models trained on the
    first half with `epochs` and `members` each. Trains into `s.registry_dir`; the
    report goes to `out`; returns the replay's one-line summary."""
    registry = Registry(s.registry_dir)
    series = nab(data / "nab", labelled=True)
    series = series.filter(pc.equal(series.column("sensor_id"), NAB_SERIES))
    half = series.slice(0, series.num_rows // 2)
    versions = [train_sensor_model(half, registry, "nab", config=s.sensor_features(),
                                   epochs=e, members=m, device=torch.device("cpu")).version
                for e, m in zip(epochs, members, strict=True)]
    return run(s.model_copy(update={"sensor_model": "nab"}),
               _parquet(series.drop_columns(["label"]), work / "nab.parquet"),
               _parquet(labels_table(series, HOUR), work / "nab-labels.parquet"), Range(),
               [Candidate("production", "nab", versions[0]),
                Candidate("candidate", "nab", versions[1])], out, every=every)
