"""The learn stage's prequential metrics equal river's `evaluate.progressive_val_score`.

`Trainer` (the live question/answer order and the online head) is fed an event's
features and its label as two streams interleaved at random, as they reach the learn
stage from different topics: a label may arrive thousands of events before its
features or long after its due time. Its final cumulative metrics must still equal
river's progressive validation of the same learner on the same data with the same
label delay, to 1e-9, on Elec2 and MovieLens 100K (the in-process half of that
acceptance criterion; the Kafka half runs the pipeline itself).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from river import compose, evaluate, metrics

from models import datasets
from models.engagement import EngagementConfig, engagement_feature_names
from models.head import Head, HeadConfig, Outcome
from models.online import build_learner
from models.trainer import Trainer
from models.training import engagement_training_set
from tests.data import shared

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
LOGISTIC = "StandardScaler | LogisticRegression"
TREE = "HoeffdingAdaptiveTreeClassifier(seed=1)"
TREE_ROWS = 10_000  # the tree is slow: the first 10,000 Elec2 rows
MOVIELENS_ROWS = 30_000  # the first 30,000 ratings (the features use all 100,000)
NAMES = {metrics.LogLoss: "log_loss", metrics.ROCAUC: "roc_auc", metrics.Accuracy: "accuracy"}


@dataclass(frozen=True)
class Row:
    event_id: str
    t: int  # event time, ms
    x: dict[str, float]
    y: bool


@dataclass(frozen=True)
class Arrival:
    kind: str  # "question" (the event's features) or "label"
    t: int  # the event's time, or the label's due time
    row: Row


def scrambled(rows: Sequence[Row], delay_ms: int, seed: int, longest: int = 500,
              swing: int = 2000) -> list[Arrival]:
    """The questions (in row order) and the labels (label i due at t_i + delay, in that
    order) interleaved in random runs of 1..`longest` from either side. One side is
    favoured until it leads by `swing` items, then the other: labels arrive thousands of
    items before their features, then thousands after them, and so on."""
    rng = random.Random(seed)
    questions = [Arrival("question", r.t, r) for r in rows]
    labels = [Arrival("label", r.t + delay_ms, r) for r in rows]
    out: list[Arrival] = []
    q = a = 0
    favour_labels = rng.random() < 0.5
    while q < len(questions) or a < len(labels):
        if (a - q if favour_labels else q - a) >= swing:
            favour_labels = not favour_labels
        run = rng.randint(1, longest)
        take_labels = rng.random() < (0.8 if favour_labels else 0.2)
        if a == len(labels) or (q < len(questions) and not take_labels):
            out += questions[q:q + run]
            q = min(q + run, len(questions))
        else:
            out += labels[a:a + run]
            a = min(a + run, len(labels))
    return out


def lead(arrivals: Sequence[Arrival]) -> tuple[int, int]:
    """How far labels ran ahead of their features, and features ahead of their labels:
    the largest number of arrivals between a label and its features, either way."""
    seen: dict[str, int] = {}
    ahead = behind = 0
    for i, item in enumerate(arrivals):
        other = seen.pop(item.row.event_id, None)
        if other is None:
            seen[item.row.event_id] = i
        elif item.kind == "question":
            ahead = max(ahead, i - other)
        else:
            behind = max(behind, i - other)
    return ahead, behind


def trainer_metrics(spec: str, arrivals: Sequence[Arrival], delay_ms: int
                    ) -> tuple[dict[str, float], Head]:
    """Feed the arrivals to a Trainer one at a time, as the learn stage does; its head's
    cumulative metrics. The horizon is an hour past the delay, as one would set it."""
    config = HeadConfig(spec=spec, horizon_ms=delay_ms + HOUR, drift="none")
    trainer = Trainer(Head("prequential", config))
    out: list[Outcome] = []
    for item in arrivals:
        if item.kind == "question":
            trainer.question(item.t, item.row.event_id, item.row.x)
        else:
            trainer.label(item.t, item.row.event_id, float(item.row.y))
        out += trainer.step()
    out += trainer.flush()
    assert out == []  # nothing rejected (and no drift detector)
    return trainer.head.metrics(), trainer.head


def river_metrics(spec: str, rows: Sequence[Row], delay_ms: int) -> dict[str, float]:
    """river's progressive validation of a fresh learner: log loss and ROC AUC (both on
    `predict_proba_one`) in one run, accuracy (on `predict_one`) in another. river reads
    the time from "t" in x, which `Discard` hides from the learner."""
    def dataset() -> Iterator[tuple[dict[str, Any], bool]]:
        for r in rows:
            yield {**r.x, "t": r.t}, r.y

    got: dict[str, float] = {}
    for group in ([metrics.LogLoss(), metrics.ROCAUC()], [metrics.Accuracy()]):
        metric = group[0] if len(group) == 1 else metrics.base.Metrics(group)
        model = compose.Discard("t") | build_learner(spec)
        evaluate.progressive_val_score(dataset(), model, metric, moment="t", delay=delay_ms)
        got |= {NAMES[type(m)]: float(m.get()) for m in group}
    return got


def assert_same(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert set(ours) == set(theirs)
    for name in theirs:
        assert math.isfinite(theirs[name]), name
        assert abs(ours[name] - theirs[name]) <= 1e-9, (name, ours[name], theirs[name])


def check(spec: str, rows: Sequence[Row], delay_ms: int, seed: int) -> dict[str, float]:
    """Scrambled arrivals through a Trainer give river's metrics; those metrics."""
    arrivals = scrambled(rows, delay_ms, seed)
    ahead, behind = lead(arrivals)
    assert ahead > 1000 and behind > 1000  # the interleaving is really scrambled
    ours, head = trainer_metrics(spec, arrivals, delay_ms)
    assert head.updates == head.counts["learned"] == head.counts["asked"] == len(rows)
    theirs = river_metrics(spec, rows, delay_ms)
    assert_same(ours, theirs)
    return ours


def rows_of(table: pa.Table, features: Sequence[str], names: Sequence[str],
            labels: pa.Array) -> list[Row]:
    cols = [table.column(f).to_pylist() for f in features]
    return [Row(event_id, t, dict(zip(names, values, strict=True)), bool(y))
            for event_id, t, y, *values in zip(
                table.column("event_id").to_pylist(), table.column("event_time").to_pylist(),
                labels.to_pylist(), *cols, strict=True)]


@pytest.fixture(scope="module")
def elec2() -> list[Row]:
    """All 45,312 Elec2 rows, one every 30 minutes: x the seven readings, y price UP."""
    table = datasets.elec2(shared("elec2"))
    readings = [f"readings.{r}" for r in datasets.ELEC2_READINGS]
    return rows_of(table, readings, list(datasets.ELEC2_READINGS), table.column("label"))


@pytest.fixture(scope="module")
def movielens() -> list[Row]:
    """MovieLens 100K ratings in time order: x the engagement features computed over the
    whole table as training computes them, y rating >= 4."""
    events = datasets.movielens(shared("movielens-100k"))
    config = EngagementConfig()
    features, _ = engagement_training_set(events, config)
    assert features.column("event_id").equals(events.column("event_id").combine_chunks())
    names = engagement_feature_names(config)
    return rows_of(pa.table(features), names, names,
                   pc.greater_equal(events.column("value"), 4.0))


@pytest.mark.parametrize("delay_ms", [30 * MINUTE, DAY])
def test_elec2_logistic_matches_river(elec2: list[Row], delay_ms: int) -> None:
    # 30 minutes: each label is due exactly when the next row is asked (a tie)
    check(LOGISTIC, elec2, delay_ms, seed=1)


@pytest.mark.parametrize("delay_ms", [30 * MINUTE, DAY])
def test_elec2_tree_matches_river(elec2: list[Row], delay_ms: int) -> None:
    check(TREE, elec2[:TREE_ROWS], delay_ms, seed=2)


@pytest.mark.parametrize("delay_ms", [HOUR, DAY])
def test_movielens_logistic_matches_river(movielens: list[Row], delay_ms: int) -> None:
    rows = movielens[:MOVIELENS_ROWS]
    times = [r.t for r in rows]
    assert len(set(times)) < len(rows) * 0.9  # many events share a second
    due = {t + delay_ms for t in times}
    assert sum(t in due for t in times) > 100  # questions asked just as a label falls due
    check(LOGISTIC, rows, delay_ms, seed=3)


def test_movielens_without_delay_matches_river(movielens: list[Row]) -> None:
    # each label is due when its own event is asked: river learns it before the next
    # question, however many events share the second
    check(LOGISTIC, movielens[:10_000], 0, seed=4)


def test_arrival_order_alone_does_not_match_river(elec2: list[Row]) -> None:
    """Without the Trainer's ordering (the head fed as things arrive) the metrics
    differ: the comparisons above can tell a wrong order."""
    rows = elec2[:10_000]
    head = Head("as-arrived", HeadConfig(spec=LOGISTIC, horizon_ms=365 * DAY, drift="none"))
    for item in scrambled(rows, DAY, seed=1):
        if item.kind == "question":
            head.ask(item.row.event_id, item.t, item.row.x)
        else:
            head.answer(item.row.event_id, item.t, float(item.row.y))
    assert head.updates == len(rows)
    theirs = river_metrics(LOGISTIC, rows, DAY)
    assert abs(head.metrics()["log_loss"] - theirs["log_loss"]) > 1e-3
