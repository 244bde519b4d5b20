"""Engagement features: equal to a pairwise pandas reference on MovieLens 100K, the same
however the stream is batched, right at cold start, and right on out-of-order streams."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.datasets import movielens
from models.engagement import (
    ENGAGEMENT_FEATURE_SET,
    EngagementConfig,
    EntityState,
    engagement_feature_names,
    engagement_features,
    engagement_state_keys,
)

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "movielens-100k"
CONFIG = EngagementConfig()
TOL = {"rtol": 1e-9, "atol": 1e-9}


def reference(events: pd.DataFrame, config: EngagementConfig) -> pd.DataFrame:
    """The features written the obvious way: per entity, every pair of its events.

    Needs events in time order (then T = t), as MovieLens is after its stable sort.
    """
    t = events["event_time"].to_numpy() / 1000.0
    imp = events["kind"].isin(["impression", "rating"]).to_numpy(dtype=float)
    pos = (events["kind"].isin(["click", "purchase"])
           | ((events["kind"] == "rating") & (events["value"] >= config.positive_rating))
           ).to_numpy(dtype=float)
    a, b, cap = config.prior_alpha, config.prior_beta, config.recency_cap_s
    keys = {"user": events["user_id"], "item": events["item_id"],
            "user_category": events["user_id"] + "\x1f" + events["category"]}
    out: dict[str, np.ndarray] = {}
    for scope, key in keys.items():
        for label in _labels(config):
            out[f"{scope}.imp_{label}"] = np.zeros(len(events))  # cold unless a group has
            out[f"{scope}.pos_{label}"] = np.zeros(len(events))  # earlier events
            out[f"{scope}.rate_{label}"] = np.full(len(events), a / (a + b))
        out[f"{scope}.recency_s"] = np.full(len(events), cap)
        for rows in events.groupby(key).indices.values():  # row positions, in row order
            ti = t[rows]
            earlier = np.tril(np.ones((len(rows), len(rows)), dtype=bool), k=-1)  # j < i
            age = np.where(earlier, ti[:, None] - ti[None, :], np.inf)
            for h, label in zip(config.half_lives_s, _labels(config), strict=True):
                weight = np.exp2(-age / h)  # 2^(-(t_i - t_j)/h) for j < i, else 0
                n_imp, n_pos = weight @ imp[rows], weight @ pos[rows]
                out[f"{scope}.imp_{label}"][rows] = n_imp
                out[f"{scope}.pos_{label}"][rows] = n_pos
                out[f"{scope}.rate_{label}"][rows] = (n_pos + a) / (np.maximum(n_imp, n_pos)
                                                                    + a + b)
            latest = np.where(earlier & (pos[rows] > 0)[None, :], ti[None, :], -np.inf).max(1)
            out[f"{scope}.recency_s"][rows] = np.minimum(cap, ti - latest)
    return pd.DataFrame(out, index=events.index)[engagement_feature_names(config)]


def _labels(config: EngagementConfig) -> list[str]:
    return [n.split("_")[1] for n in engagement_feature_names(config)
            if n.startswith("user.imp_")]


def streamed(table: pa.Table, sizes: list[int], config: EngagementConfig
             ) -> tuple[pd.DataFrame, dict[str, EntityState]]:
    """Features batch by batch, state carried between batches as the agent carries it."""
    state: dict[str, EntityState] = {}
    parts, lo = [], 0
    for size in sizes:
        batch = table.slice(lo, size).combine_chunks().to_batches()[0]
        out, new = engagement_features(batch, state, config)
        assert set(new) == set(engagement_state_keys(batch))
        state.update(new)
        parts.append(out)
        lo += size
    assert lo == table.num_rows
    return pa.Table.from_batches(parts).to_pandas(), state


@pytest.fixture(scope="module")
def ratings() -> pa.Table:
    if not (DATA / "u.data.gz").exists():
        pytest.fail(f"MovieLens 100K is missing: expected it in {DATA} (shared/data/README.md)")
    return movielens(DATA)


def test_movielens_loader_gives_time_ordered_rating_events(ratings: pa.Table) -> None:
    assert ratings.num_rows == 100_000
    times = ratings.column("event_time").to_numpy()
    assert (np.diff(times) >= 0).all()
    raw = pd.read_csv(DATA / "u.data.gz", sep="\t",
                      names=["user_id", "item_id", "rating", "timestamp"])
    raw = raw.sort_values("timestamp", kind="stable")  # file order among equal times
    assert ratings.column("event_id").to_pylist() == [f"ml-{i}" for i in raw.index]
    assert ratings.column("user_id").to_pylist() == raw["user_id"].astype(str).tolist()
    assert (times == raw["timestamp"].to_numpy() * 1000).all()
    items = ratings.select(["item_id", "category"]).to_pandas().drop_duplicates()
    category = dict(zip(items["item_id"], items["category"], strict=True))
    assert (category["1"], category["2"], category["267"]) == ("Animation", "Action", "unknown")
    assert ratings.column("category").null_count == 0


def test_features_equal_the_pairwise_reference_on_movielens(ratings: pa.Table) -> None:
    rng = np.random.default_rng(7)
    sizes: list[int] = []
    while sum(sizes) < ratings.num_rows:
        sizes.append(int(min(rng.integers(1, 6000), ratings.num_rows - sum(sizes))))
    got, state = streamed(ratings, sizes, CONFIG)
    want = reference(ratings.to_pandas(), CONFIG)
    names = engagement_feature_names(CONFIG)
    assert list(got.columns) == ["event_id", "event_time", "entity_id", "item_id", *names]
    assert got["event_id"].tolist() == ratings.column("event_id").to_pylist()
    assert got["entity_id"].tolist() == ratings.column("user_id").to_pylist()
    assert got["item_id"].tolist() == ratings.column("item_id").to_pylist()
    for name in names:
        np.testing.assert_allclose(got[name].to_numpy(), want[name].to_numpy(), **TOL,
                                   err_msg=name)
    # the reference is not trivially cold: warm rows, decayed counts and capped recency
    assert (want["user.imp_1d"] > 10).any() and (want["item.pos_10m"] > 0).any()
    assert 0 < (want["user_category.recency_s"] < CONFIG.recency_cap_s).mean() < 1
    assert len(state) == 943 + 1682 + ratings.select(["user_id", "category"]).to_pandas(
    ).drop_duplicates().shape[0]

    whole, whole_state = streamed(ratings, [ratings.num_rows], CONFIG)
    np.testing.assert_allclose(whole[names].to_numpy(), got[names].to_numpy(), rtol=1e-12,
                               atol=1e-12)
    assert whole_state.keys() == state.keys()
    np.testing.assert_allclose(np.array(list(whole_state.values())),
                               np.array([state[k] for k in whole_state]), rtol=1e-12,
                               atol=1e-300)  # denormal sums differ in their last bits


def _batch(rows: list[dict[str, object]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=pa.schema([
        ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
        ("category", pa.string()), ("event_time", pa.int64()), ("kind", pa.string()),
        ("value", pa.float64()), ("source_offset", pa.int64())]))


def _event(i: int, user: str, item: str, category: str | None, t_ms: int, kind: str,
           value: float = 1.0) -> dict[str, object]:
    return {"event_id": f"e{i}", "user_id": user, "item_id": item, "category": category,
            "event_time": t_ms, "kind": kind, "value": value, "source_offset": 100 + i}


def test_cold_start_for_new_user_item_and_category() -> None:
    config = EngagementConfig(half_lives_s=(60.0, 7200.0), prior_alpha=2.0, prior_beta=3.0,
                              recency_cap_s=1000.0)
    _, states = engagement_features(_batch([
        _event(0, "old", "known", "Drama", 1_000, "click"),
        _event(1, "old", "known", "Drama", 2_000, "impression")]), {}, config)
    before = copy.deepcopy(states)
    out, new = engagement_features(_batch([
        _event(2, "new", "fresh", "Comedy", 5_000, "purchase"),  # all three entities new
        _event(3, "old", "fresh", "Western", 6_000, "impression"),  # old user, new rest
        _event(4, "old", "known", None, 7_000, "impression"),  # no category at all
    ]), states, config)
    assert states == before  # the caller's state is left alone
    rows = out.to_pylist()
    cold = {"imp_1m": 0.0, "pos_1m": 0.0, "rate_1m": 0.4, "imp_2h": 0.0, "pos_2h": 0.0,
            "rate_2h": 0.4, "recency_s": 1000.0}
    for scope in ("user", "item", "user_category"):
        assert {k: rows[0][f"{scope}.{k}"] for k in cold} == cold
    assert {k: rows[1][f"user_category.{k}"] for k in cold} == cold
    assert rows[1]["user.imp_1m"] == pytest.approx(2 ** (-4 / 60))  # the old impression
    assert rows[1]["user.recency_s"] == 5.0  # old user's click at 1 s, now 6 s
    assert rows[1]["item.pos_1m"] == pytest.approx(2 ** (-1 / 60))  # the purchase at 5 s
    assert {k: rows[2][f"user_category.{k}"] for k in cold} == cold
    assert rows[2]["item.imp_1m"] == pytest.approx(2 ** (-5 / 60))
    assert "uc:old\x1fDrama" not in new  # a null category updates no user-category state
    assert set(new) == {"u:new", "u:old", "i:fresh", "i:known", "uc:new\x1fComedy",
                        "uc:old\x1fWestern"}
    assert [r["source_offset"] for r in rows] == [102, 103, 104]
    assert out.schema.metadata[b"feature_set"] == ENGAGEMENT_FEATURE_SET.encode()
    assert out.schema.metadata[b"feature_names"].decode().split(",") == (
        engagement_feature_names(config))


def test_default_feature_names() -> None:
    stats = ["imp_10m", "pos_10m", "rate_10m", "imp_1h", "pos_1h", "rate_1h",
             "imp_1d", "pos_1d", "rate_1d", "recency_s"]
    assert engagement_feature_names(EngagementConfig()) == [
        f"{scope}.{s}" for scope in ("user", "item", "user_category") for s in stats]
    with pytest.raises(ValueError):
        EngagementConfig(half_lives_s=(3600.0, 3600.0))


Event = tuple[str, str, str | None, int, str, float]  # user, item, category, ms, kind, value


def brute_force(events: list[Event], config: EngagementConfig) -> dict[str, list[float]]:
    """The definition applied event by event: sums over the earlier-applied events."""
    applied: dict[str, list[tuple[int, bool, bool]]] = {}
    out: dict[str, list[float]] = {n: [] for n in engagement_feature_names(config)}
    a, b, cap = config.prior_alpha, config.prior_beta, config.recency_cap_s
    for user, item, category, t, kind, value in events:  # whole ms: exact differences
        is_imp = kind in ("impression", "rating")
        is_pos = kind in ("click", "purchase") or (
            kind == "rating" and value >= config.positive_rating)
        keys = {"user": f"u{user}", "item": f"i{item}",
                "user_category": None if category is None else f"c{user}\x1f{category}"}
        for scope, key in keys.items():
            earlier = applied.get(key, []) if key is not None else []
            big_t = max([t] + [tj for tj, _, _ in earlier])
            for h, label in zip(config.half_lives_s, _labels(config), strict=True):
                n_imp = sum(2 ** (-(big_t - tj) / 1000 / h) for tj, i, _ in earlier if i)
                n_pos = sum(2 ** (-(big_t - tj) / 1000 / h) for tj, _, p in earlier if p)
                out[f"{scope}.imp_{label}"].append(n_imp)
                out[f"{scope}.pos_{label}"].append(n_pos)
                out[f"{scope}.rate_{label}"].append((n_pos + a) / (max(n_imp, n_pos) + a + b))
            positives = [tj for tj, _, p in earlier if p]
            out[f"{scope}.recency_s"].append(
                min(cap, (big_t - max(positives)) / 1000) if positives else cap)
            if key is not None:
                applied.setdefault(key, []).append((t, is_imp, is_pos))
    return out


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(st.tuples(
        st.sampled_from(["a", "b", "c"]), st.sampled_from(["x", "y"]),
        st.sampled_from(["A", "B", None]), st.integers(0, 4_000_000),
        st.sampled_from(["impression", "click", "impression", "rating", "purchase"]),
        st.sampled_from([1.0, 4.0, 5.0])), min_size=1, max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=4),
    half_life=st.sampled_from([1.0, 60.0, 600.0]), far=st.booleans())
def test_out_of_order_streams_match_the_definition(
        events: list[Event], cuts: list[int], half_life: float, far: bool) -> None:
    config = EngagementConfig(half_lives_s=(half_life, 3600.0), recency_cap_s=2000.0)
    if far:  # every third event ~140,000 years later: times too far apart for one pass
        events = [(u, i, c, t + 2**52 * (n % 3 == 0), k, v)
                  for n, (u, i, c, t, k, v) in enumerate(events)]
    rows = [_event(i, *e) for i, e in enumerate(events)]
    state: dict[str, EntityState] = {}
    got = []
    bounds = [0, *sorted({c for c in cuts if c < len(rows)}), len(rows)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi > lo:
            out, new = engagement_features(_batch(rows[lo:hi]), state, config)
            state.update(new)
            got.append(out)
    table = pa.Table.from_batches(got)
    want = brute_force(events, config)
    for name, values in want.items():
        np.testing.assert_allclose(table.column(name).to_numpy(), values, **TOL, err_msg=name)
