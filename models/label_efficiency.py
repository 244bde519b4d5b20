"""How much a curation strategy's labels are worth: a learner that learns only from the
labels a `Curator` asked for, evaluated on every event (test-then-train), as
Zliobaite et al. (2014) evaluate active learning on streams.

Events replay in event-time order through headwater's own sensor features (the online
head's inputs), in micro-batches as infer scores them. Each prediction is made by the
learner as it is then; the curator picks from each micro-batch; a picked event's label
is due `delay_ms` after the event and is learned when the stream reaches that time, as
many times as its weight says (`Chosen.weight`: a random pick the strategy would not
have made stands for the events like it that were not asked).
The learner is a committee of `members` river learners built from the head's spec, each
learning with online bagging (Oza and Russell: each label k ~ Poisson(1) times), whose
mean is the prediction and whose variance is the `ensemble` strategy's disagreement
(a label of weight w: k ~ Poisson(w) times).

>>> from pathlib import Path
>>> from models.datasets import elec2
>>> x, y, t = prepare(elec2(Path(__file__).resolve().parents[2] / "shared/data/elec2",
...                         limit=2_000))
>>> r = replay(x, y, t, strategy="least-confidence", fraction=0.05, seed=0)
>>> r.labels, r.events, 0.0 <= r.accuracy <= 1.0  # the 100 the budget allows
(100, 2000, True)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from models.curation import Budget, Curator
from models.features import sensor_features
from models.online import build_learner
from models.training import roc_auc
from streams.infer import head_features
from streams.settings import Settings

__all__ = ["Result", "prepare", "replay"]


@dataclass(frozen=True)
class Result:
    """One replay: metrics on every event, and the labels the curator took."""

    strategy: str
    fraction: float
    seed: int
    accuracy: float
    roc_auc: float
    labels: int
    events: int
    label_rate: float
    window_use: list[float]  # each whole hour of the curator's clock: labels / budget there


def prepare(events: pa.Table, head: str = "*.last,*.z_15m"
            ) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray]:
    """Feature dicts (the head's inputs), labels and event times of a labelled sensor
    table, in event-time order, through the live feature code."""
    events = events.sort_by([("event_time", "ascending")])
    y = events.column("label").to_numpy().astype(np.int64)
    batch = pa.Table.from_pydict({**{c: events.column(c) for c in events.schema.names
                                     if c != "label"},
                                  "source_offset": pa.array(np.arange(events.num_rows))}
                                 ).combine_chunks().to_batches()[0]
    out, _, _ = sensor_features(batch, {}, Settings().sensor_features())
    names = out.schema.metadata[b"feature_names"].decode().split(",")
    keep = head_features(names, head)[:-1]  # no deep model here: its score is left out
    cols = {n: np.nan_to_num(out.column(n).to_numpy(zero_copy_only=False).astype(float))
            for n in keep}
    rows = [dict(zip(keep, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
    ids = out.column("event_id").to_pylist()
    order = {e: i for i, e in enumerate(events.column("event_id").to_pylist())}
    at = np.array([order[e] for e in ids])
    return rows, y[at], events.column("event_time").to_numpy()[at]


def replay(x: list[dict[str, float]], y: np.ndarray, t: np.ndarray, *, strategy: str,
           fraction: float, seed: int, spec: str = "StandardScaler | LogisticRegression",
           members: int = 4, batch: int = 64, delay_ms: int = 3_600_000,
           per_hour: int = 5_000, max_weight: int = 10) -> Result:
    """Replay one stream with one strategy and budget (see the module doc).

    The curator's clock runs at `per_hour` events an hour of event time, evenly spaced
    in stream order, and holds the budget over an hour (the default
    HEADWATER_CURATE_WINDOW), as on a live stream of that rate: the datasets' own
    timestamps hold 2 (Elec2) to 60 (Occupancy) events an hour, too few for a budget
    of 1% to mean anything per hour, and NAB's series overlap with steps from 5 min to
    1 h. Labels still fall due `delay_ms` after their event in the dataset's own time.
    `max_weight` as `Curator` takes it (1: every label learned once)."""
    rng = np.random.default_rng(seed)
    committee: list[Any] = [build_learner(spec) for _ in range(members)]
    hour = 3_600_000
    clock = np.arange(len(y), dtype=np.int64) * hour // per_hour
    curator = Curator(strategy, Budget(fraction=fraction, window_ms=hour), seed=seed,
                      max_weight=max_weight)
    due: list[tuple[int, int, int]] = []  # (label time, event index, weight)
    p = np.zeros(len(y))
    taken = np.zeros(len(y), bool)
    for start in range(0, len(y), batch):
        stop = min(len(y), start + batch)
        for i in range(start, stop):
            while due and due[0][0] <= t[i]:
                _, j, weight = heapq.heappop(due)
                for m in committee:
                    for _ in range(rng.poisson(float(weight))):
                        m.learn_one(x[j], bool(y[j]))
        members_p = np.array([[m.predict_proba_one(x[i]).get(True, 0.5) for m in committee]
                              for i in range(start, stop)])
        p[start:stop] = members_p.mean(axis=1)
        for c in curator.choose({"event_id": np.arange(start, stop).astype(str),
                                 "event_time": clock[start:stop],
                                 "probability": p[start:stop],
                                 "variance": members_p.var(axis=1)}):
            taken[start + c.row] = True
            heapq.heappush(due, (int(t[start + c.row]) + delay_ms, start + c.row, c.weight))
    return Result(strategy, fraction, seed, float(((p >= 0.5) == (y == 1)).mean()),
                  roc_auc(y, p), int(taken.sum()), len(y), float(taken.mean()),
                  window_use(clock, taken, fraction, hour))


def window_use(t: np.ndarray, taken: np.ndarray, fraction: float, window_ms: int
               ) -> list[float]:
    """Labels taken over labels allowed in each whole window of `window_ms` from the first
    event (the last, partial one left out), for windows holding any events.

    >>> window_use(np.arange(10) * 100, np.arange(10) % 2 == 0, 0.5, 400)
    [1.0, 1.0]
    """
    if not len(t):
        return []
    k = (t - t[0]) // window_ms
    whole = k < k.max()
    events = np.bincount(k[whole])
    labels = np.bincount(k[whole], weights=taken[whole].astype(float))
    return [float(n / (fraction * e)) for n, e in zip(labels, events, strict=True) if e]
