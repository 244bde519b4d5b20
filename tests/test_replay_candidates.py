"""Candidate against production on MovieLens 100K and on a NAB series, through
`headwater replay`'s own code (streams/candidates.py): each report is complete, compares
the arms side by side on every label, and its plots render (the PNGs decode to drawn
images, the HTML embeds them and opens in headless Chromium without a console error)."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from streams.candidates import movielens_candidates, nab_candidates
from streams.settings import Settings
from tests.test_replay import check_renders

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(registry_dir=tmp_path / "registry", device="cpu", drift_detector="none",
                    head_horizon="1d", curate_window="1d")


def check_report(out: Path, tmp_path: Path, arms: list[str], events: int) -> list[dict]:
    """The report in `out` is complete and renders; its candidates' summaries. Every
    event featurize accepts is scored by every arm on its label."""
    doc = orjson.loads((out / "report.json").read_bytes())
    assert doc["complete"] and doc["events"] == events
    assert events - 20 <= doc["featurized"] == doc["labels"], doc  # NAB: 10 too late
    got = doc["candidates"]
    assert [c["candidate"] for c in got] == arms
    for c in got:
        assert c["labels"] == doc["labels"], c["candidate"]
        for part in ("head", "deep"):
            figures = c[part]["cumulative"]
            assert {"log_loss", "roc_auc"} <= set(figures), (c["candidate"], part)
            assert all(math.isfinite(v) for v in figures.values()), (c["candidate"], figures)
        assert len(c["points"]) >= 2
        assert 0 < c["curated"]["events"] <= 0.01 * events + 2, c["curated"]
    check_renders(out, tmp_path / f"{out.name}.png")
    return list(got)


def test_movielens_candidate_against_production(settings: Settings, tmp_path: Path) -> None:
    line = movielens_candidates(settings, DATA, tmp_path, tmp_path / "movielens", epochs=1,
                                every=5000)
    assert "replayed 100000 events and 100000 labels through 3 candidates" in line, line
    prod, cand, slow = check_report(tmp_path / "movielens", tmp_path,
                                    ["production", "candidate", "production-sgd0.002"], 100_000)
    assert cand["model_version"] != prod["model_version"] == slow["model_version"]
    assert cand["deep"] != prod["deep"] and slow["deep"] == prod["deep"]
    assert slow["head"] != prod["head"]


def test_nab_candidate_against_production(settings: Settings, tmp_path: Path) -> None:
    line = nab_candidates(settings, DATA, tmp_path, tmp_path / "nab", epochs=(1, 3),
                          members=(2, 3), every=2000)
    assert "replayed 22695 events and 22685 labels through 2 candidates" in line, line
    prod, cand = check_report(tmp_path / "nab", tmp_path, ["production", "candidate"], 22_695)
    assert cand["model_version"] != prod["model_version"]
    assert cand["deep"] != prod["deep"]
