"""A head's prequential metrics, cumulative and rolling, equal to river's to the last bit.

river's `metrics.LogLoss`, `ROCAUC` and `Accuracy` (`MAE` and `RMSE` for regression),
each also wrapped in `utils.Rolling`, cost about 27 us per label together: six objects,
method layers per update, and ten confusion matrices per ROC AUC update (twice for the
rolling one, which reverts a label as it adds one). That was two-thirds of what the
learn stage adds to a linear learner. These classes keep the same state in a few
numbers per label and do the same arithmetic in the same order, so every figure they
give is the float river's objects give, not an approximation of it
(`tests/test_scores.py` checks that on real data, bit for bit).

- Log loss, MAE and RMSE are river's running mean (`stats.Mean`: update and revert).
- ROC AUC is river's: ten thresholds, `p > threshold`, the trapezoid over (FPR, TPR).
  Each label is counted once in the bin of the number of thresholds below its
  probability, and each threshold's confusion matrix is summed from the bins on demand.
- Accuracy counts labels whose most probable class is the label.

>>> from river import metrics
>>> s, roc = ClassifierScores(window=2), metrics.ROCAUC()
>>> for y, p in [(True, 0.8), (False, 0.4), (True, 0.35), (False, 0.1)]:
...     _ = s.update(y, {False: 1 - p, True: p})
...     roc.update(y, {False: 1 - p, True: p})
>>> s.get()["roc_auc"] == float(roc.get()), float(roc.get())
(True, 0.875)
>>> round(s.get()["accuracy"], 2), s.get(rolling=True)["accuracy"]
(0.75, 0.5)
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from typing import Any

from scipy import integrate

__all__ = ["ClassifierScores", "RegressorScores", "Scores", "THRESHOLDS"]

#: river's `ROCAUC(n_thresholds=10)` thresholds, the outer two nudged past 0 and 1 as river does
THRESHOLDS = [i / 9 for i in range(10)]
THRESHOLDS[0] -= 1e-7
THRESHOLDS[-1] += 1e-7
_LOW, _HIGH = 1e-15, 1 - 1e-15  # river's clamp of a probability for the log loss


class _Mean:
    """river's `stats.Mean` with unit weights: the same float operations in the same order."""

    __slots__ = ("mean", "n")

    def __init__(self) -> None:
        self.n, self.mean = 0.0, 0.0

    def update(self, x: float) -> None:
        self.n += 1.0
        self.mean += (1.0 / self.n) * (x - self.mean)

    def revert(self, x: float) -> None:
        self.n -= 1.0
        self.mean = 0.0 if self.n == 0 else self.mean - (1.0 / self.n) * (x - self.mean)


class _Roc:
    """river's ten-threshold `ROCAUC`, kept as label counts per bin (see the module doc)."""

    __slots__ = ("neg", "pos")

    def __init__(self) -> None:
        self.pos = [0] * (len(THRESHOLDS) + 1)  # bin k: k thresholds lie below p
        self.neg = [0] * (len(THRESHOLDS) + 1)

    def get(self) -> float:
        tprs, fprs = [], []
        pos_total, neg_total = sum(self.pos), sum(self.neg)
        above_pos, above_neg = pos_total, neg_total  # labels with p > threshold i
        for i in range(len(THRESHOLDS)):
            above_pos -= self.pos[i]
            above_neg -= self.neg[i]
            tprs.append(above_pos / pos_total if pos_total else 0.0)
            fprs.append(above_neg / neg_total if neg_total else 0.0)
        return float(-integrate.trapezoid(x=fprs, y=tprs))


class Scores:
    """What both kinds share: the rolling window of what each label added."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"a rolling window holds at least one label, not {window}")
        self.window = window
        self._kept: deque[tuple[Any, ...]] = deque()

    def update(self, y: Any, y_pred: Any) -> float:  # pragma: no cover - abstract
        """Score one label; returns its error for a drift detector."""
        raise NotImplementedError

    def get(self, rolling: bool = False) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


class ClassifierScores(Scores):
    """Log loss, ROC AUC and accuracy of binary predictions (`{False: p0, True: p1}`)."""

    def __init__(self, window: int = 1000) -> None:
        super().__init__(window)
        self._loss, self._roc, self._hits = _Mean(), _Roc(), 0
        self._rloss, self._rroc, self._rhits = _Mean(), _Roc(), 0

    @property
    def count(self) -> int:
        """Labels scored so far."""
        return int(self._loss.n)

    def update(self, y: Any, y_pred: Any) -> float:
        """Score one label `y` (True is positive) against predicted class probabilities;
        returns 0.0 when the most probable class was right, else 1.0."""
        p = y_pred.get(True, 0.0)
        q = max(min(p, _HIGH), _LOW)
        loss = -math.log(q) if y else -math.log(1 - q)
        k = bisect_left(THRESHOLDS, p)  # thresholds below p: river's `p > t` is true for them
        hit = max(y_pred, key=y_pred.get) == y
        positive = y is True or y == True  # noqa: E712 - river compares with pos_val True
        kept, cum, roll = self._kept, self._loss, self._rloss
        if len(kept) == self.window:  # utils.Rolling: revert the oldest, then update
            old_loss, old_k, old_hit, old_positive = kept.popleft()
            roll.n -= 1.0
            roll.mean = 0.0 if roll.n == 0 else roll.mean - (1.0 / roll.n) * (old_loss - roll.mean)
            (self._rroc.pos if old_positive else self._rroc.neg)[old_k] -= 1
            self._rhits -= old_hit
        kept.append((loss, k, hit, positive))
        cum.n += 1.0  # _Mean.update, inline: a method call per update was a fifth of it
        cum.mean += (1.0 / cum.n) * (loss - cum.mean)
        roll.n += 1.0
        roll.mean += (1.0 / roll.n) * (loss - roll.mean)
        if positive:
            self._roc.pos[k] += 1
            self._rroc.pos[k] += 1
        else:
            self._roc.neg[k] += 1
            self._rroc.neg[k] += 1
        self._hits += hit
        self._rhits += hit
        return 0.0 if hit else 1.0

    def get(self, rolling: bool = False) -> dict[str, float]:
        """The metrics over every label, or over the last `window` of them."""
        loss, roc, hits = ((self._rloss, self._rroc, self._rhits) if rolling
                           else (self._loss, self._roc, self._hits))
        return {"log_loss": loss.mean, "roc_auc": roc.get(),
                "accuracy": hits / loss.n if loss.n else 0.0}


class RegressorScores(Scores):
    """MAE and RMSE of numeric predictions.

    >>> s = RegressorScores(window=1)
    >>> s.update(3.0, 1.0), s.update(1.0, 2.0)
    (2.0, 1.0)
    >>> s.get(), s.get(rolling=True)
    ({'mae': 1.5, 'rmse': 1.5811388300841898}, {'mae': 1.0, 'rmse': 1.0})
    """

    def __init__(self, window: int = 1000) -> None:
        super().__init__(window)
        self._abs, self._sq, self._rabs, self._rsq = _Mean(), _Mean(), _Mean(), _Mean()

    @property
    def count(self) -> int:
        """Labels scored so far."""
        return int(self._abs.n)

    def update(self, y: Any, y_pred: Any) -> float:
        """Score one label against a predicted number; returns the absolute error."""
        error = abs(y - y_pred)
        square = (y - y_pred) ** 2
        kept = self._kept
        if len(kept) == self.window:
            old_error, old_square = kept.popleft()
            self._rabs.revert(old_error)
            self._rsq.revert(old_square)
        kept.append((error, square))
        self._abs.update(error)
        self._sq.update(square)
        self._rabs.update(error)
        self._rsq.update(square)
        return float(error)

    def get(self, rolling: bool = False) -> dict[str, float]:
        """The metrics over every label, or over the last `window` of them."""
        mae, mse = (self._rabs, self._rsq) if rolling else (self._abs, self._sq)
        return {"mae": float(mae.mean), "rmse": float(mse.mean ** 0.5)}
