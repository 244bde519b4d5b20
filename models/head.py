"""The online head: a river learner that keeps learning from delayed labels,
test-then-train, with prequential metrics and a drift detector on its errors.

A *question* is an event's features (`ask`): the head predicts and keeps the features
and the prediction until the event's label arrives. An *answer* is a label (`answer`):
the kept prediction is scored first, then the head learns. This is river's
`evaluate.progressive_val_score` with a delay, held for a live stream: fed in the order
`models.ordering.QAOrder` gives, the metrics equal river's exactly.

Rules (each counted in `Head.counts`):
- a label whose event was not asked waits up to `horizon_ms` (in stream time) for it,
  then is `unmatched`; a label older than the horizon when it arrives is `stale`;
- a second label for an event is a `duplicate` and is not learned (the first label
  wins); a classification label other than 0 or 1 is `bad-value`;
- an asked event with no label within the horizon is dropped (`unlabelled`), or, with
  `negative_window_ms`, becomes a negative when that window closes (`implicit`: an
  impression nobody engaged with); a label after that is a `duplicate`.

>>> head = Head("demo", HeadConfig(spec="LogisticRegression", horizon_ms=100))
>>> head.ask("e1", 0, {"x": 1.0})
{False: 0.5, True: 0.5}
>>> head.answer("e1", 5, 1.0)
[]
>>> head.updates, round(head.metrics()["log_loss"], 4)
(1, 0.6931)
>>> [o.reason for o in head.answer("e9", 6, 1.0) + head.advance(200)]
['unmatched-label']
"""

from __future__ import annotations

import math
import pickle
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from river import base, compose, drift, linear_model, preprocessing

from models.online import Task, boost_learning_rate, build_learner, task_of
from models.scores import ClassifierScores, RegressorScores, Scores

__all__ = ["DRIFT_DETECTORS", "Head", "HeadConfig", "HeadScorer", "Outcome", "PackedFeatures",
           "Row", "head_scores"]

DRIFT_DETECTORS = ("ADWIN", "PageHinkley", "none")
DriftAction = Literal["none", "reset", "boost-lr", "curate"]


@dataclass(frozen=True)
class HeadConfig:
    """How one online head learns (settings build it)."""

    spec: str = "StandardScaler | LogisticRegression"
    horizon_ms: int = 3_600_000  # how long features wait for a label, in stream time
    rolling: int = 1000  # labels in the rolling metrics
    drift: Literal["ADWIN", "PageHinkley", "none"] = "ADWIN"
    drift_action: DriftAction = "none"
    boost_factor: float = 2.0  # the learning-rate factor of the `boost-lr` action
    negative_window_ms: int = 0  # 0: no implicit negatives
    max_pending: int = 200_000  # asked events kept for their label, at most


@dataclass(frozen=True)
class Outcome:
    """Something the stream must act on: a label to dead-letter, or a drift alert."""

    kind: Literal["rejected", "drift"]
    event_id: str
    reason: str
    detail: str
    time: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Row:
    """One event's features, compact while it waits for its label (a dict of 200 floats
    takes about 15 kB; this, about 1 kB). `names` is shared by the rows of a batch."""

    names: tuple[str, ...]
    values: Any  # a 1-d numpy array

    def to_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values.tolist(), strict=True))


Features = dict[str, float] | Row


@dataclass(frozen=True)
class PackedFeatures:
    """Many events' features in a few arrays, for a checkpoint: pickling 100,000 `Row`
    objects one by one took about 2 s, during which the worker's event loop (every other
    stage) stood still; packed, it takes a few hundredths.

    >>> xs = [Row(("a", "b"), np.array([1.0, 2.0])), {"c": 3.0}, Row(("a",), np.array([4.0]))]
    >>> back = PackedFeatures.pack(xs).unpack()
    >>> [x.to_dict() if isinstance(x, Row) else x for x in back]
    [{'a': 1.0, 'b': 2.0}, {'c': 3.0}, {'a': 4.0}]
    """

    names: list[tuple[str, ...]]  # the distinct feature names of the rows
    kind: np.ndarray  # per event: its names' index, or -1 for a plain dict
    values: np.ndarray  # every row's values, one after another
    dicts: list[dict[str, float]]  # the plain dicts, in order

    @staticmethod
    def pack(xs: list[Features]) -> PackedFeatures:
        names: dict[tuple[str, ...], int] = {}
        kind = np.empty(len(xs), np.int64)
        parts: list[np.ndarray] = []
        dicts: list[dict[str, float]] = []
        for i, x in enumerate(xs):
            if isinstance(x, Row):
                kind[i] = names.setdefault(x.names, len(names))
                parts.append(x.values)
            else:
                kind[i] = -1
                dicts.append(x)
        values = np.concatenate(parts) if parts else np.empty(0)
        return PackedFeatures(list(names), kind, values, dicts)

    def unpack(self) -> list[Features]:
        widths = np.array([len(n) for n in self.names], np.int64)
        ends = np.cumsum(np.where(self.kind >= 0, widths[np.maximum(self.kind, 0)], 0)
                         if len(widths) else np.zeros(len(self.kind), np.int64)).tolist()
        dicts = iter(self.dicts)
        out: list[Features] = []
        start = 0
        for k, end in zip(self.kind.tolist(), ends, strict=True):
            if k < 0:
                out.append(next(dicts))
            else:
                out.append(Row(self.names[k], self.values[start:end]))
            start = end
        return out


class _Unasked:
    """The prediction of an event asked lazily, not made yet."""


@dataclass
class _Asked:
    t: int
    x: Features
    y_pred: Any
    entity: str


class Head:
    """One online head (see the module doc). Not thread-safe: one writer per model."""

    def __init__(self, name: str, config: HeadConfig) -> None:
        self.name = name
        self.config = config
        self.model: Any = build_learner(config.spec)  # river's learners are untyped
        self.task: Task = task_of(self.model)
        self.scores: Scores = (ClassifierScores if self.task == "classification"
                               else RegressorScores)(config.rolling)
        self.detector = _detector(config.drift)
        self.updates = 0  # labels learned: the head's version
        self.frozen = False  # True: labels are scored but no longer learned
        self.clock = -(1 << 62)  # the latest stream time seen
        self.counts = {k: 0 for k in ("asked", "learned", "duplicate", "unmatched", "stale",
                                      "bad-value", "unlabelled", "implicit", "evicted",
                                      "drift")}
        self._asked: OrderedDict[str, _Asked] = OrderedDict()  # in ask order
        self._waiting: OrderedDict[str, tuple[int, float, str, Any, int]] = OrderedDict()
        self._answered: OrderedDict[str, int] = OrderedDict()  # event id -> answer time
        self._unasked: list[str] = []  # asked lazily, not predicted yet
        # what learning a waiting label in `ask` gave (a drift): `take` hands it out
        self.held: list[Outcome] = []

    def __getstate__(self) -> dict[str, Any]:
        """The head for pickling, its kept events packed (`PackedFeatures`)."""
        state = self.__dict__.copy()
        asked = list(self._asked.values())
        state["_asked"] = (list(self._asked), [a.t for a in asked],
                           PackedFeatures.pack([a.x for a in asked]),
                           [a.y_pred for a in asked], [a.entity for a in asked])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        kept = state["_asked"]
        if isinstance(kept, tuple):  # packed; a checkpoint of older code holds the dict
            ids, times, xs, preds, entities = kept
            state["_asked"] = OrderedDict(zip(ids, map(_Asked, times, xs.unpack(), preds,
                                                       entities), strict=True))
        self.__dict__.update(state)

    # -- the stream ------------------------------------------------------------------

    def ask(self, event_id: str, t: int, x: Features, entity: str = "",
            lazy: bool = False) -> Any:
        """Predict for an event (before any of its label is learned) and keep it.

        `lazy`: predict only when the model is about to change or the label comes (the
        same prediction, since the model has not moved meanwhile), and return None: a
        stream without labels then costs no predictions at all."""
        self._tick(t)
        self.counts["asked"] += 1
        if event_id in self._answered or event_id in self._asked:
            self.counts["duplicate"] += 1
            return None if lazy else self.predict(x.to_dict() if isinstance(x, Row) else x)
        y_pred: Any = _Unasked if lazy else \
            self.predict(x.to_dict() if isinstance(x, Row) else x)
        if lazy:
            self._unasked.append(event_id)
            if len(self._unasked) > 2 * self.config.max_pending:  # ids the horizon dropped
                self._unasked = [e for e in self._unasked if e in self._asked]
        self._asked[event_id] = _Asked(t, x, y_pred, entity)
        if len(self._asked) > self.config.max_pending:
            self._asked.popitem(last=False)
            self.counts["evicted"] += 1
        if (w := self._waiting.pop(event_id, None)) is not None:
            self.held += self._learn(event_id, w[0], w[1], w[4])
        return None if lazy else y_pred

    def take(self) -> list[Outcome]:
        """The outcomes of labels learned when their event was asked (they waited for
        its features), once: `ask` returns a prediction, not outcomes."""
        out, self.held = self.held, []
        return out

    def answer(self, event_id: str, t: int, y: float, source: str = "outcome",
               where: Any = None, weight: int = 1) -> list[Outcome]:
        """Score the kept prediction of `event_id` against label `y`, then learn from it
        `weight` times (scored once, learned as that many labels: a curated random pick).

        `where` (the label's source coordinates, say) comes back in the `extra` of an
        Outcome that rejects this label."""
        self._tick(t)
        if self.task == "classification" and y not in (0, 1):
            self.counts["bad-value"] += 1
            return [Outcome("rejected", event_id, "bad-label-value",
                            f"{self.name} is a classifier: a label is 0 or 1, not {y!r}", t,
                            {"where": where})]
        if t < self.clock - self.config.horizon_ms:
            self.counts["stale"] += 1
            return [Outcome("rejected", event_id, "stale-label",
                            f"label time {t} is more than {self.config.horizon_ms} ms "
                            f"behind the stream ({self.clock})", t, {"where": where})]
        if event_id in self._answered or event_id in self._waiting:
            self.counts["duplicate"] += 1
            return []
        if event_id not in self._asked:
            self._waiting[event_id] = (t, y, source, where, weight)
            return []
        return self._learn(event_id, t, y, weight)

    def advance(self, t: int) -> list[Outcome]:
        """Move stream time to `t`: implicit negatives, and what the horizon drops."""
        self._tick(t)
        out: list[Outcome] = []
        window = self.config.negative_window_ms
        if window:
            while self._asked and next(iter(self._asked.values())).t + window <= self.clock:
                event_id, asked = next(iter(self._asked.items()))
                self.counts["implicit"] += 1
                out += self._learn(event_id, asked.t + window, 0.0)
        edge = self.clock - self.config.horizon_ms
        while self._asked and next(iter(self._asked.values())).t < edge:
            self._asked.popitem(last=False)
            self.counts["unlabelled"] += 1
        while self._waiting and next(iter(self._waiting.values()))[0] < edge:
            event_id, (due, _, source, where, _) = self._waiting.popitem(last=False)
            self.counts["unmatched"] += 1
            out.append(Outcome("rejected", event_id, "unmatched-label",
                               f"no features for this {source} label within "
                               f"{self.config.horizon_ms} ms", due, {"where": where}))
        while self._answered and next(iter(self._answered.values())) < edge:
            self._answered.popitem(last=False)
        return out

    # -- the model -----------------------------------------------------------------------

    def predict(self, x: dict[str, float]) -> Any:
        """The head's prediction: class probabilities, or a number for regression."""
        if self.task == "classification":
            return self.model.predict_proba_one(x)
        return self.model.predict_one(x)

    def metrics(self, rolling: bool = False) -> dict[str, float]:
        """The prequential metrics, cumulative or over the last `rolling` labels."""
        return self.scores.get(rolling)

    def model_bytes(self) -> bytes:
        """The learner alone, for serving (zlib-compressed pickle)."""
        return zlib.compress(pickle.dumps(self.model, protocol=5), 1)

    def checkpoint(self) -> bytes:
        """Everything, for recovery: learner, metrics, detector, kept events."""
        return zlib.compress(pickle.dumps(self, protocol=5), 1)

    @staticmethod
    def restore(raw: bytes) -> Head:
        head = pickle.loads(zlib.decompress(raw))
        if not isinstance(head, Head):
            raise TypeError(f"not a Head checkpoint: {type(head).__name__}")
        return head

    # -- inside ----------------------------------------------------------------------

    def _tick(self, t: int) -> None:
        if t > self.clock:
            self.clock = t

    def _ask_pending(self) -> None:
        """Predict for the lazily asked events, before the model changes."""
        for event_id in self._unasked:
            asked = self._asked.get(event_id)
            if asked is not None and asked.y_pred is _Unasked:
                x = asked.x
                asked.y_pred = self.predict(x.to_dict() if isinstance(x, Row) else x)
        self._unasked.clear()

    def _learn(self, event_id: str, t: int, y: float, weight: int = 1) -> list[Outcome]:
        if self._unasked:
            self._ask_pending()
        asked = self._asked.pop(event_id)
        self._answered[event_id] = t
        target: Any = bool(y) if self.task == "classification" else y
        y_pred = asked.y_pred
        out: list[Outcome] = []
        if y_pred != {} and y_pred is not None:  # as river's progressive validation
            error = self.scores.update(target, y_pred)
            out += self._watch(event_id, t, error, asked.entity)
        if self.frozen:
            return out
        x = asked.x.to_dict() if isinstance(asked.x, Row) else asked.x
        for _ in range(weight):
            self.model.learn_one(x, target)
        self.updates += 1
        self.counts["learned"] += 1
        return out

    def _watch(self, event_id: str, t: int, error: float, entity: str) -> list[Outcome]:
        if self.detector is None or not math.isfinite(error):
            return []
        self.detector.update(error)
        if not self.detector.drift_detected:
            return []
        self.counts["drift"] += 1
        action: str = self.config.drift_action
        if action == "reset":
            self.model = build_learner(self.config.spec)
        elif action == "boost-lr" and not boost_learning_rate(self.model,
                                                              self.config.boost_factor):
            action = "none (no learning rate to raise)"
        return [Outcome("drift", event_id, self.config.drift,
                        f"{self.config.drift} saw the error rate of {self.name} change",
                        t, {"action": action, "slice": entity, "labels": self.updates,
                            "rolling": self.metrics(rolling=True)})]


def head_scores(learner: Any, names: list[str], x: np.ndarray) -> np.ndarray:
    """A served head's score of each row of `x` (columns `names`): P(True) for a
    classifier, the prediction for a regressor; NaN where it has none yet.

    `[StandardScaler |] LogisticRegression` (or LinearRegression) scores the whole batch
    in numpy; other learners score row by row. The two agree to float64 rounding.

    >>> head = Head("h", HeadConfig(spec="StandardScaler | LogisticRegression"))
    >>> for v, y in ((0.0, 0), (1.0, 1), (0.2, 0), (0.9, 1)):
    ...     _ = head.ask(str(v), 0, {"a": v}); _ = head.answer(str(v), 0, y)
    >>> p = head_scores(head.model, ["a"], np.array([[0.0], [1.0]]))
    >>> bool(p[0] < 0.5 < p[1]), bool(abs(p[1] - head.predict({"a": 1.0})[True]) < 1e-12)
    (True, True)
    """
    return HeadScorer(learner, names)(x)


class HeadScorer:
    """`head_scores` for one served learner, its linear weights taken out once."""

    def __init__(self, learner: Any, names: list[str]) -> None:
        self.learner = learner
        self.names = names
        self.linear = _linear(learner, names)
        self.classifier = task_of(learner) == "classification"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.empty(0)
        return self._score(np.asarray(x, np.float64))

    def _score(self, x: np.ndarray) -> np.ndarray:
        linear, learner, names = self.linear, self.learner, self.names
        if linear is not None:
            mean, scale, weights, intercept, logistic = linear
            z = np.where(scale > 0, (x - mean) / np.where(scale > 0, scale, 1.0), 0.0) \
                if mean is not None else x
            raw = z @ weights + intercept
            if not logistic:
                return np.asarray(raw, np.float64)
            with np.errstate(over="ignore"):
                p = 1.0 / (1.0 + np.exp(-raw))
            return np.where(raw < -30, 0.0, np.where(raw > 30, 1.0, p))  # river's clamps
        classifier = self.classifier
        out = np.full(len(x), np.nan)
        for i, values in enumerate(x.tolist()):
            row = dict(zip(names, values, strict=True))
            if classifier:
                p_one = learner.predict_proba_one(row)
                out[i] = p_one.get(True, np.nan) if p_one else np.nan
            else:
                got = learner.predict_one(row)
                out[i] = np.nan if got is None else got
        return out


def _linear(learner: Any, names: list[str]) -> tuple[Any, Any, Any, float, bool] | None:
    """(mean, std, weights, intercept, logistic) of `[StandardScaler |]` a linear or
    logistic regression, as arrays over `names`; None for any other learner."""
    steps = list(learner.steps.values()) if isinstance(learner, compose.Pipeline) \
        else [learner]
    scaler = steps[0] if len(steps) == 2 else None
    final = steps[-1]
    if len(steps) > 2 or type(final) not in (linear_model.LogisticRegression,
                                             linear_model.LinearRegression):
        return None
    mean = scale = None
    if scaler is not None:
        if type(scaler) is not preprocessing.StandardScaler or not scaler.with_std \
                or scaler.window_size is not None:
            return None
        mean = np.array([scaler.means.get(n, 0.0) for n in names])
        scale = np.sqrt(np.array([scaler.vars.get(n, 0.0) for n in names]))
    w = final.weights
    weights = np.array([w.get(n, 0.0) for n in names])
    return mean, scale, weights, float(final.intercept), \
        type(final) is linear_model.LogisticRegression


def _detector(name: str) -> base.DriftDetector | None:
    if name == "none":
        return None
    if name not in DRIFT_DETECTORS:
        raise ValueError(f"unknown drift detector {name!r}; one of {DRIFT_DETECTORS}")
    made: base.DriftDetector = (drift.ADWIN() if name == "ADWIN"  # type: ignore[no-untyped-call]
                                else drift.PageHinkley())
    return made
