"""The sensor features written the obvious way with pandas, to check the streaming code.

In-order rows use pandas' time-based `rolling(W, closed="right")` and
`ewm(halflife=h, times=...)` over each series sorted by time. The few rows that a
later-processed, earlier-timed row would wrongly join there (a stream's steps back in
time) are recomputed from their definition: the rows processed before them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.features import SensorConfig, duration_label


def _z(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    flat = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flat, 0.0, (x - mean) / std)


def _sorted_series(t: np.ndarray, x: np.ndarray, config: SensorConfig) -> dict[str, np.ndarray]:
    """Features of every row of one series, treating the rows as processed in time order."""
    order = np.argsort(t, kind="stable")
    s = pd.Series(x[order], index=pd.to_datetime(t[order], unit="ms"))
    out: dict[str, np.ndarray] = {"last": s.to_numpy()}
    prev_t = np.concatenate([[np.nan], t[order][:-1].astype(float)])
    gap = np.nan_to_num((t[order] - prev_t) / 1000.0)
    delta = s.diff().fillna(0.0).to_numpy()
    out["delta"], out["since_last_s"] = delta, gap
    out["rate"] = np.where(gap > 0, delta / np.where(gap > 0, gap, 1), 0.0)
    for w in config.windows_ms:
        r = s.rolling(pd.Timedelta(milliseconds=w), closed="right")
        lab = duration_label(w)
        mean = r.mean().to_numpy()
        # pandas' own rolling std is an online sum that leaves ~1e-6 where the exact answer
        # is 0, so the reference takes each window's two-pass np.std
        std = r.apply(np.std, raw=True).to_numpy()
        out[f"count_{lab}"] = r.count().to_numpy()
        out[f"mean_{lab}"], out[f"std_{lab}"] = mean, std
        out[f"min_{lab}"], out[f"max_{lab}"] = r.min().to_numpy(), r.max().to_numpy()
        out[f"z_{lab}"] = _z(s.to_numpy(), mean, std)
    for h in config.half_lives_ms:
        ewm = s.ewm(halflife=pd.Timedelta(milliseconds=h), times=s.index).mean()
        out[f"ewma_{duration_label(h)}"] = ewm.to_numpy()
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return {k: v[back] for k, v in out.items()}


def _one_row(t: np.ndarray, x: np.ndarray, i: int, config: SensorConfig) -> dict[str, float]:
    """Features of row i from their definition: the rows before it with time <= t_i."""
    seen = np.nonzero((np.arange(len(t)) <= i) & (t <= t[i]))[0]
    seen = seen[np.argsort(t[seen], kind="stable")]  # i is last: ties keep processing order
    ts, xs = t[seen], x[seen]
    out = {"last": x[i], "delta": 0.0, "since_last_s": 0.0, "rate": 0.0}
    if len(seen) > 1:
        out["delta"] = xs[-1] - xs[-2]
        out["since_last_s"] = (ts[-1] - ts[-2]) / 1000.0
        out["rate"] = out["delta"] / out["since_last_s"] if out["since_last_s"] > 0 else 0.0
    for w in config.windows_ms:
        win = xs[ts > t[i] - w]
        lab = duration_label(w)
        mean, std = win.mean(), win.std()
        out.update({f"count_{lab}": len(win), f"mean_{lab}": mean, f"std_{lab}": std,
                    f"min_{lab}": win.min(), f"max_{lab}": win.max(),
                    f"z_{lab}": float(_z(np.array([x[i]]), np.array([mean]),
                                         np.array([std]))[0])})
    for h in config.half_lives_ms:
        weight = np.exp2(-(t[i] - ts) / h)
        out[f"ewma_{duration_label(h)}"] = float(weight @ xs / weight.sum())
    return out


def late_rows(events: pd.DataFrame, config: SensorConfig) -> np.ndarray:
    """Rows more than the lateness behind their sensor's latest earlier time (a mask)."""
    running = events.groupby("sensor_id")["event_time"].cummax()
    return (running - events["event_time"]).to_numpy() > config.lateness_ms


def sensor_reference(events: pd.DataFrame, config: SensorConfig) -> pd.DataFrame:
    """Features of the accepted rows of `events` (processing order), indexed by event id."""
    events = events[~late_rows(events, config)]
    readings = sorted(c.removeprefix("readings.") for c in events if c.startswith("readings."))
    frames = []
    for _, g in events.groupby("sensor_id", sort=False):
        cols: dict[str, np.ndarray] = {}
        for r in readings:
            present = g[f"readings.{r}"].notna().to_numpy()
            t = g["event_time"].to_numpy(np.int64)[present]
            x = g[f"readings.{r}"].to_numpy(np.float64)[present]
            feats = _sorted_series(t, x, config) if len(t) else {}
            # rows that a later-processed, earlier-timed row joins when sorted by time
            later_min = np.minimum.accumulate(np.append(t, np.iinfo(np.int64).max)[::-1])[::-1]
            for i in np.nonzero(later_min[1:] < t)[0]:
                for k, v in _one_row(t, x, int(i), config).items():
                    feats[k][i] = v
            for k, v in feats.items():
                full = np.full(len(g), np.nan)
                full[present] = v
                cols[f"{r}.{k}"] = full
        frames.append(pd.DataFrame(cols, index=g["event_id"].to_numpy()))
    return pd.concat(frames)
