"""Online learning is worth something: on MovieLens 100K replayed in time order with labels
an hour late, the online wide-and-deep head beats the same head frozen after the first 10%
of the labels, in prequential log loss over the labels after the freeze (all 100,000
events: 40-60 s on two cores, depending on load)."""

from __future__ import annotations

import pytest

from models.datasets import movielens
from models.value import ValueResult, online_vs_frozen
from tests.data import shared

HOUR_MS = 3_600_000
SPEC = "StandardScaler | LogisticRegression"


@pytest.fixture(scope="module")
def result() -> ValueResult:
    return online_vs_frozen(movielens(shared("movielens-100k")), delay_ms=HOUR_MS, spec=SPEC,
                            fraction=0.1)


def test_online_head_beats_the_frozen_head_on_movielens(result: ValueResult) -> None:
    online, frozen = result.online.metrics, result.frozen.metrics
    print(f"\nprequential log loss after the freeze, {int(online['labels']):,} labels: "
          f"online {online['log_loss']:.4f}, frozen {frozen['log_loss']:.4f}, "
          f"deep model alone {result.deep.metrics['log_loss']:.4f}")
    assert online["log_loss"] < frozen["log_loss"], (online, frozen)


def test_both_heads_are_scored_on_the_same_labels_after_the_freeze(result: ValueResult
                                                                    ) -> None:
    assert result.events == 100_000 and result.freeze_at == 10_000
    for arm in (result.online, result.frozen, result.deep):
        assert arm.metrics["labels"] == 90_000
        assert arm.curve.labels == result.online.curve.labels
        assert arm.curve.labels[0] > result.freeze_at and arm.curve.labels[-1] == 100_000
        # the cumulative curve ends at the final metric
        assert arm.curve.cumulative[-1] == pytest.approx(arm.metrics["log_loss"])
