"""What online learning is worth: the wide-and-deep online head, learning throughout,
against the same head frozen once the first `fraction` of the stream's labels are learned.

`online_vs_frozen` replays an engagement event table (`models.datasets.movielens`'s
columns) in event-time order, as replay and the learn stage do, with no Kafka:

1. the deep engagement model is trained on the first `fraction` of the events only
   (`train_engagement_model`, CPU, seeded, into a temporary registry): the model that
   was deployed at that point; it stays frozen for the whole stream;
2. the engagement features of every event (from empty state, in time order) and the
   deep model's probability for it (`collate` with the model's manifest,
   `BatchScorer.score`);
3. the head's input is the numeric features plus `deep_score`, its label whether the
   event is a positive (a rating >= 4);
4. two `Trainer`s see the same stream with the same label delay (each label is due
   `delay_ms` after its event): one learns throughout, the other's head is set
   `frozen = True` the moment it has learned the first `fraction` of the events' labels
   (labels are learned in due order, so exactly those of the first events);
5. prequential (test-then-train) metrics of both, and of the deep model alone, over the
   very same labels: those after the freeze point only, so the frozen head is scored
   only on labels it never learned from and the online head on the same ones.

`prequential_curve` turns per-label predictions into the curves:

>>> import numpy as np
>>> p, y = np.array([0.9, 0.9, 0.1, 0.2, 0.5]), np.array([1.0, 0.0, 0.0, 1.0, 1.0])
>>> c = prequential_curve(p, y, start=1, every=2, window=2)
>>> c.labels, [round(v, 3) for v in c.cumulative], [round(v, 3) for v in c.rolling]
([3, 5], [1.204, 1.178], [1.204, 1.151])
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import torch

from models.engagement import EngagementConfig, engagement_feature_names
from models.head import Head, HeadConfig, Outcome
from models.inference import BatchScorer, collate
from models.registry import Registry
from models.trainer import Trainer
from models.training import (
    ENGAGEMENT_MODEL,
    engagement_training_set,
    roc_auc,
    train_engagement_model,
)

__all__ = ["Arm", "Curve", "ValueResult", "online_vs_frozen", "prequential_curve"]

F64 = npt.NDArray[np.float64]
DEEP_SCORE = "deep_score"  # the head's input beside the engagement features
_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps], as river's LogLoss does


@dataclass(frozen=True)
class Curve:
    """Prequential log loss after `labels` labels (counted from the stream's first):
    `cumulative` over the labels since the freeze point, `rolling` over the last
    `window` of them."""

    labels: list[int]
    cumulative: list[float]
    rolling: list[float]


@dataclass(frozen=True)
class Arm:
    """One contender: its final metrics over the labels after the freeze point
    (`log_loss`, `roc_auc`, `accuracy`, `labels`) and its curve."""

    name: str
    metrics: dict[str, float]
    curve: Curve


@dataclass(frozen=True)
class ValueResult:
    online: Arm
    frozen: Arm
    deep: Arm  # the deep model's probability alone, on the same labels
    events: int
    freeze_at: int  # labels learned before the frozen head stopped learning
    delay_ms: int
    spec: str
    deep_metrics: dict[str, float]  # the deep model's own validation within the fraction


def _log_losses(p: F64, y: F64) -> F64:
    q = np.clip(p, _EPS, 1 - _EPS)
    losses: F64 = -(y * np.log(q) + (1 - y) * np.log(1 - q))
    return losses


def prequential_curve(p: F64, y: F64, *, start: int, every: int, window: int) -> Curve:
    """Log loss of predictions `p` for labels `y` (in scoring order) at every `every`-th
    label after `start` and at the last: cumulative from label `start`, rolling over the
    last `window` labels (none before `start`)."""
    losses = _log_losses(p, y)
    sums = np.concatenate([[0.0], np.cumsum(losses)])
    ends = list(range(start + every, len(p) + 1, every))
    if not ends or ends[-1] != len(p):
        ends.append(len(p))
    ends = [e for e in ends if e > start]
    cumulative = [float((sums[e] - sums[start]) / (e - start)) for e in ends]
    rolling = []
    for e in ends:
        b = max(start, e - window)
        rolling.append(float((sums[e] - sums[b]) / (e - b)))
    return Curve(ends, cumulative, rolling)


def _metrics(p: F64, y: F64) -> dict[str, float]:
    return {"log_loss": float(_log_losses(p, y).mean()), "roc_auc": roc_auc(y, p),
            "accuracy": float(((p >= 0.5) == (y == 1)).mean()), "labels": float(len(p))}


class _Probe(Head):
    """A head that keeps its P(positive) for each asked event and, for each label it
    scores, the event id and label in scoring order; with `freeze_after`, it sets
    `frozen` the moment it has learned that many labels."""

    def __init__(self, name: str, config: HeadConfig, freeze_after: int | None) -> None:
        super().__init__(name, config)
        self.freeze_after = freeze_after
        self.predicted: dict[str, float] = {}
        self.scored: list[tuple[str, float, float]] = []  # (event id, p, y)

    # signatures pass through whatever else Head takes: Head's are Head's to change
    def ask(self, event_id: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["lazy"] = False  # the probe keeps each prediction as it is made
        y_pred = super().ask(event_id, *args, **kwargs)
        self.predicted[event_id] = float(y_pred.get(True, 0.0)) if y_pred else 0.5
        return y_pred

    def answer(self, event_id: str, t: int, y: float, *args: Any, **kwargs: Any
               ) -> list[Outcome]:
        p = self.predicted.pop(event_id, None)
        out = super().answer(event_id, t, y, *args, **kwargs)
        if p is not None and not any(o.kind == "rejected" for o in out):
            self.scored.append((event_id, p, y))
        if self.freeze_after is not None and self.updates >= self.freeze_after:
            self.frozen = True
        return out


def online_vs_frozen(events: pa.Table, *, delay_ms: int,
                     spec: str = "StandardScaler | LogisticRegression",
                     fraction: float = 0.1, config: EngagementConfig | None = None,
                     epochs: int = 3, seed: int = 0, every: int = 500, window: int = 1000
                     ) -> ValueResult:
    """Replay `events` with labels `delay_ms` late through an online and a frozen head
    (the module doc); deterministic for a given `seed`."""
    config = config or EngagementConfig()
    if delay_ms <= 0:
        raise ValueError(f"delay_ms must be positive (a label comes after its event), "
                         f"not {delay_ms}")
    events = events.take(pc.sort_indices(events, [("event_time", "ascending")]))
    n = events.num_rows
    n_train = int(n * fraction)
    if not 0 < n_train < n:
        raise ValueError(f"fraction {fraction} of {n} events leaves nothing to train on "
                         "or nothing after it")
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:  # the deep model deployed at the freeze
        registry = Registry(Path(tmp))
        trained = train_engagement_model(events.slice(0, n_train), registry, config=config,
                                         epochs=epochs, seed=seed, device=cpu)
        deep = registry.load(ENGAGEMENT_MODEL)
    feats, y = engagement_training_set(events, config)
    x, bad = collate(feats, deep.manifest)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} events have features the deep model cannot score")
    p_deep = BatchScorer(deep.module, cpu).score(x).probability

    names = engagement_feature_names(config)
    keys = [*names, DEEP_SCORE]
    rows = np.column_stack([feats.column(c).to_numpy(zero_copy_only=False) for c in names]
                           + [p_deep])
    ids: list[str] = feats.column("event_id").to_pylist()
    times: list[int] = feats.column("event_time").to_pylist()
    labels = y.astype(np.float64).tolist()
    head_config = HeadConfig(spec=spec, drift="none", rolling=window,
                             horizon_ms=max(HeadConfig().horizon_ms, 2 * delay_ms))
    heads = [_Probe("online", head_config, None), _Probe("frozen", head_config, n_train)]
    trainers = [Trainer(h) for h in heads]
    for i in range(n):
        x_i = dict(zip(keys, rows[i].tolist(), strict=True))
        for trainer in trainers:
            trainer.question(times[i], ids[i], x_i)
            trainer.label(times[i] + delay_ms, ids[i], labels[i])
            trainer.step()
    for trainer in trainers:
        trainer.flush()

    order = [s[0] for s in heads[0].scored]
    for h in heads:
        if len(h.scored) != n or [s[0] for s in h.scored] != order:
            raise RuntimeError(f"{h.name} scored {len(h.scored)} of {n} labels: {h.counts}")
    if heads[1].updates != n_train:
        raise RuntimeError(f"the frozen head learned {heads[1].updates} labels, not {n_train}")
    index = {event_id: i for i, event_id in enumerate(ids)}
    y_seq = np.array([s[2] for s in heads[0].scored])
    preds = {h.name: np.array([s[1] for s in h.scored]) for h in heads}
    preds["deep only"] = p_deep[[index[e] for e in order]]
    arms = {name: Arm(name, _metrics(p[n_train:], y_seq[n_train:]),
                      prequential_curve(p, y_seq, start=n_train, every=every, window=window))
            for name, p in preds.items()}
    return ValueResult(arms["online"], arms["frozen"], arms["deep only"], n, n_train,
                       delay_ms, spec, dict(trained.metrics))
