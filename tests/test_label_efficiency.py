"""On real data (NAB, ../shared/data): the curator holds its budget within 10% in every
hour of a replay (bench/curation.py checks every dataset, strategy, budget and seed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.datasets import nab
from models.label_efficiency import prepare, replay

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def stream() -> tuple[list[dict[str, float]], np.ndarray, np.ndarray]:
    return prepare(nab(DATA / "nab", labelled=True))


@pytest.mark.parametrize("strategy", ["least-confidence", "ensemble", "random"])
def test_every_hour_of_a_replay_holds_the_budget(
        stream: tuple[list[dict[str, float]], np.ndarray, np.ndarray], strategy: str) -> None:
    """The uncertainty strategies used to fall to 68-78% of 1% in some hours here: a
    threshold drawn from past scores lagged a head growing surer."""
    x, y, t = stream
    r = replay(x, y, t, strategy=strategy, fraction=0.01, seed=0)  # 5,000 events an hour
    assert len(r.window_use) == len(y) // 5_000  # every whole hour but the stream's last
    assert all(abs(u - 1) <= 0.10 for u in r.window_use), np.round(r.window_use, 2).tolist()
    assert 0.9 * 0.01 * len(y) <= r.labels <= 0.01 * len(y)
