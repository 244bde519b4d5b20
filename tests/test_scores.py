"""`models.scores` gives the same floats as river's metric objects, bit for bit.

Each test feeds the same labels and predictions to our scores and to river's
`LogLoss`, `ROCAUC`, `Accuracy` (`MAE`, `RMSE`), cumulative and in `utils.Rolling`, and
compares every figure after every few labels with `==`: real predictions (a river
learner on Elec2), and the edges (probabilities on river's thresholds, 0 and 1, a
prediction without the positive class, a window of one).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from river import metrics, utils

from models import datasets
from models.online import build_learner
from models.scores import THRESHOLDS, ClassifierScores, RegressorScores
from tests.data import shared

CLASSIFIER = {"log_loss": metrics.LogLoss, "roc_auc": metrics.ROCAUC,
              "accuracy": metrics.Accuracy}
REGRESSOR = {"mae": metrics.MAE, "rmse": metrics.RMSE}


class River:
    """river's own objects, updated as the head updated them before `models.scores`."""

    def __init__(self, kinds: dict[str, Any], window: int) -> None:
        self.cumulative = {k: m() for k, m in kinds.items()}
        self.rolling = {k: utils.Rolling(m, window_size=window) for k, m in kinds.items()}

    def update(self, y: Any, y_pred: Any) -> None:
        label = max(y_pred, key=y_pred.get) if isinstance(y_pred, dict) else None
        for held in (self.cumulative, self.rolling):
            for k, m in held.items():
                m.update(y, label if k == "accuracy" else y_pred)

    def get(self, rolling: bool = False) -> dict[str, float]:
        held = self.rolling if rolling else self.cumulative
        return {k: float(m.get()) for k, m in held.items()}


def compare(pairs: list[tuple[Any, Any]], window: int, every: int = 7) -> int:
    """Feed both; assert equal figures every `every` labels and at the end."""
    regression = not isinstance(pairs[0][1], dict)
    ours = (RegressorScores if regression else ClassifierScores)(window)
    theirs = River(REGRESSOR if regression else CLASSIFIER, window)
    checked = 0
    for i, (y, y_pred) in enumerate(pairs, start=1):
        ours.update(y, y_pred)
        theirs.update(y, y_pred)
        if i % every == 0 or i == len(pairs):
            for rolling in (False, True):
                assert ours.get(rolling) == theirs.get(rolling), (i, rolling)
            checked += 1
    assert ours.count == len(pairs)
    return checked


@pytest.fixture(scope="module")
def elec2_predictions() -> list[tuple[bool, dict[bool, float]]]:
    """A scaled logistic regression's test-then-train predictions on 20,000 Elec2 rows."""
    table = datasets.elec2(shared("elec2"), limit=20_000)
    names = list(datasets.ELEC2_READINGS)
    columns = [table.column(f"readings.{r}").to_pylist() for r in names]
    model = build_learner("StandardScaler | LogisticRegression")
    out = []
    for values, y in zip(zip(*columns, strict=True), table.column("label").to_pylist(),
                         strict=True):
        x = dict(zip(names, values, strict=True))
        out.append((bool(y), model.predict_proba_one(x)))
        model.learn_one(x, bool(y))
    return out


@pytest.mark.parametrize("window", [1, 50, 1000])
def test_classifier_scores_equal_river_on_elec2(
        elec2_predictions: list[tuple[bool, dict[bool, float]]], window: int) -> None:
    assert compare(elec2_predictions, window) > 2_000


def test_classifier_scores_equal_river_at_the_edges() -> None:
    rng = random.Random(7)
    edges = [*THRESHOLDS, *(i / 9 for i in range(10)), 0.0, 1.0, 1e-16, 1 - 1e-16, 0.5]
    pairs: list[tuple[Any, Any]] = []
    for _ in range(5_000):
        p = rng.choice(edges) if rng.random() < 0.5 else rng.random()
        y_pred: dict[bool, float] = {False: 1 - p, True: p}
        if rng.random() < 0.02:
            y_pred = {False: 1.0}  # a learner that has seen one class only
        pairs.append((rng.random() < 0.3, y_pred))
    for window in (1, 3, 200):
        compare(pairs, window, every=1)


def test_one_class_so_far_gives_river_zeros() -> None:
    assert compare([(True, {False: 0.2, True: 0.8})] * 5, window=2, every=1) == 5


def test_regressor_scores_equal_river() -> None:
    rng = random.Random(3)
    pairs = [(rng.gauss(3, 2), rng.gauss(3, 1)) for _ in range(5_000)]
    pairs += [(1.0, 1.0), (0.0, 1e300 ** 0.5), (-2, 5)]
    for window in (1, 10, 1000):
        compare(pairs, window, every=3)


def test_a_window_holds_at_least_one_label() -> None:
    with pytest.raises(ValueError, match="at least one label"):
        ClassifierScores(window=0)
