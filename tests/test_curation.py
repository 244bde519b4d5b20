"""The curator holds its budget, honours slices and boosts, and never picks an event twice."""

from __future__ import annotations

import numpy as np
import pytest

from models.curation import STRATEGIES, Budget, Chosen, Curator, Slice, predicate, score

HOUR = 3_600_000


def stream(hours: int, per_hour: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Predictions whose confidence drifts: the model grows sure, then unsure again."""
    rng = np.random.default_rng(seed)
    n = hours * per_hour
    t = np.sort(rng.integers(0, hours * HOUR, n))
    spread = 0.05 + 0.45 * np.abs(np.sin(t / (7 * HOUR)))
    p = np.clip(0.5 + rng.normal(0, 1, n) * spread, 0, 1)
    return {"event_id": np.array([f"e{i}" for i in range(n)]), "event_time": t,
            "probability": p, "variance": rng.random(n) * spread,
            "entity_id": rng.choice(np.array(["a", "b", "c", "d"]), n, p=[.1, .2, .3, .4])}


def run(curator: Curator, cols: dict[str, np.ndarray], seed: int = 1) -> np.ndarray:
    """Feed the stream in batches of random sizes (1 to 500 rows: at most a minute and a
    half of a 20,000-event hour; live batches span under a second); the chosen rows."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    i, n = 0, len(cols["event_id"])
    while i < n:
        j = min(n, i + int(rng.integers(1, 500)))
        chosen += [i + c.row for c in curator.choose({k: v[i:j] for k, v in cols.items()})]
        i = j
    return np.array(chosen, int)


def hourly_rates(cols: dict[str, np.ndarray], chosen: np.ndarray) -> np.ndarray:
    hours = cols["event_time"] // HOUR
    events = np.bincount(hours)
    labels = np.bincount(hours[chosen], minlength=len(events))
    return labels[1:] / events[1:]  # the first hour fills the window


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.2])
def test_the_label_rate_stays_within_ten_percent_of_the_budget_every_hour(
        strategy: str, fraction: float) -> None:
    cols = stream(hours=12, per_hour=20_000)
    chosen = run(Curator(strategy, Budget(fraction=fraction), seed=3), cols)
    rates = hourly_rates(cols, chosen)
    assert np.all(np.abs(rates / fraction - 1) <= 0.10), (rates / fraction).round(3).tolist()


def test_labels_per_hour_are_held_and_never_exceeded_in_any_window() -> None:
    cols = stream(hours=10, per_hour=30_000)
    chosen = run(Curator("entropy", Budget(per_hour=500)), cols)
    per_hour = np.bincount(cols["event_time"][chosen] // HOUR)[1:]
    assert np.all(np.abs(per_hour / 500 - 1) <= 0.10), per_hour.tolist()
    t = np.sort(cols["event_time"][chosen])  # any hour-long window, not only whole hours
    assert (np.searchsorted(t, t + HOUR) - np.arange(len(t))).max() <= 500


def test_an_event_is_never_chosen_twice() -> None:
    cols = stream(hours=2, per_hour=5_000)
    curator = Curator("least-confidence", Budget(fraction=0.5))
    first = run(curator, cols)
    again = run(curator, cols)  # the same events replayed, as after a crash
    assert len(first) > 0 and len(again) > 0  # the replay's budget goes to others
    assert set(first.tolist()).isdisjoint(again.tolist())


def test_uncertainty_strategies_choose_uncertain_events_and_random_does_not() -> None:
    cols = stream(hours=4, per_hour=10_000)
    lc = score("least-confidence", cols["probability"])
    picked = {s: lc[run(Curator(s, Budget(fraction=0.05)), cols)].mean()
              for s in ("least-confidence", "random")}
    assert picked["least-confidence"] > picked["random"] + 0.1
    same = [run(Curator(s, Budget(fraction=0.05)), cols).tolist()
            for s in ("least-confidence", "margin", "entropy")]  # one order for 2 classes
    assert same[0] == same[1] == same[2]


def test_slices_get_their_share_and_a_drift_boost_raises_it_for_a_while() -> None:
    cols = stream(hours=8, per_hour=20_000)
    slices = [Slice("a", "entity_id == 'a'", 0.3, drift_boost=2.0),
              Slice("night", "hour < 2 or entity_id == 'b'", 0.2)]
    curator = Curator("least-confidence", Budget(fraction=0.05), slices)
    chosen = run(curator, cols)
    member = np.where(cols["entity_id"] == "a", "a", np.where(
        predicate("hour < 2 or entity_id == 'b'")(cols), "night", "rest"))
    late = chosen[cols["event_time"][chosen] >= 2 * HOUR]  # from 2 h every slice has events
    got = {name: int((member[late] == name).sum()) for name in ("a", "night", "rest")}
    assert len(late) == pytest.approx(0.05 * (cols["event_time"] >= 2 * HOUR).sum(), rel=0.05)
    for name, share in (("a", 0.3), ("night", 0.2), ("rest", 0.5)):
        assert got[name] / len(late) == pytest.approx(share, abs=0.02), got
    # a slice's share is reserved for it: before 2 h "night" takes every event but a's,
    # and the rest's half of the budget goes unspent rather than to another slice
    early = chosen[cols["event_time"][chosen] < 2 * HOUR]
    assert set(member[early]) == {"a", "night"}

    boosted = Curator("least-confidence", Budget(fraction=0.05), slices)
    half = {k: v[: len(v) // 2] for k, v in cols.items()}
    run(boosted, half)
    boosted.boost("a", until_ms=int(half["event_time"][-1]) + 2 * HOUR)
    assert boosted.shares()["a"] == pytest.approx(0.6)
    boosted.boost("night", until_ms=10**15)  # no drift_boost: unchanged
    assert boosted.shares()["night"] == pytest.approx(0.2)
    rest = {k: v[len(v) // 2:] for k, v in cols.items()}
    run(boosted, rest)
    assert boosted.shares()["a"] == pytest.approx(0.3)  # the boost ran out


@pytest.mark.parametrize(("expr", "message"), [
    ("entity_id = 'a'", "invalid syntax"),
    ("hour > other", "compare hour with a constant"),
    ("len(x)", "Call is not allowed"),
])
def test_a_bad_slice_predicate_is_refused_with_a_reason(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Slice("s", expr, 0.1)


def test_bad_budgets_and_strategies_are_refused() -> None:
    for text in ("0", "150%", "-3/h", "lots"):
        with pytest.raises(ValueError):
            Budget.parse(text)
    with pytest.raises(ValueError, match="unknown curation strategy"):
        Curator("vibes", Budget(fraction=0.1))
    with pytest.raises(ValueError, match="more than the whole budget"):
        Curator("random", Budget(fraction=0.1), [Slice("a", "hour < 1", 0.7),
                                                 Slice("b", "hour > 1", 0.4)])


def picks(curator: Curator, cols: dict[str, np.ndarray], size: int = 200) -> list[Chosen]:
    """What the curator chose from the stream in batches of `size` rows."""
    return [c for i in range(0, len(cols["event_id"]), size)
            for c in curator.choose({k: v[i:i + size] for k, v in cols.items()})]


def test_random_picks_the_strategy_would_not_make_are_weighted_by_their_odds() -> None:
    cols = stream(hours=3, per_hour=10_000)
    chosen = picks(Curator("least-confidence", Budget(fraction=0.05), seed=4), cols)
    weighted = [c for c in chosen if c.weight > 1]
    assert len(weighted) > 0.1 * len(chosen)
    assert all(c.reason.startswith("explore") and f"learned {c.weight}x" in c.reason
               for c in weighted)
    # picked with probability explore * want, about 0.2 * 0.05: 1 / 0.01 = 100, capped at
    # 10 (less while the window starts and the curator is catching up)
    assert max(c.weight for c in weighted) == 10
    assert sum(c.weight == 10 for c in weighted) > 0.9 * len(weighted)
    assert all(c.weight == 1 for c in chosen if not c.reason.startswith("explore"))
    three = picks(Curator("least-confidence", Budget(fraction=0.05), seed=4, max_weight=3),
                  cols)
    assert {c.weight for c in three} == {1, 3}
    assert {c.weight for c in picks(Curator("random", Budget(fraction=0.05)), cols)} == {1}
    with pytest.raises(ValueError, match="max_weight"):
        Curator("entropy", Budget(fraction=0.05), max_weight=0)


def test_the_budget_is_held_while_the_model_grows_ever_surer() -> None:
    """Scores that fall all the time leave a threshold drawn from past scores too high;
    a slice that falls behind then takes rows at random at the catch-up pace, so no hour
    comes up short."""
    rng = np.random.default_rng(4)
    n, per_hour = 8 * 5_000, 5_000
    t = np.arange(n) * HOUR // per_hour
    spread = 0.5 * np.exp(-t / (1.5 * HOUR))  # ever surer, by a factor e every 1.5 h
    p = np.clip(0.5 + np.sign(rng.normal(0, 1, n)) * (0.5 - spread * rng.random(n)), 0, 1)
    cols = {"event_id": np.array([f"e{i}" for i in range(n)]), "event_time": t,
            "probability": p}
    curator = Curator("least-confidence", Budget(fraction=0.01), seed=2)
    got = [(i + c.row, c) for i in range(0, n, 64)
           for c in curator.choose({k: v[i:i + 64] for k, v in cols.items()})]
    per = np.bincount(t[[i for i, _ in got]] // HOUR, minlength=8)
    assert np.all(np.abs(per / 50 - 1) <= 0.10), per.tolist()
    paced = [c for _, c in got if c.reason.startswith("pace")]
    assert len(paced) > 0.1 * len(got) and all(c.weight == 1 for c in paced)
