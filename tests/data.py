"""The shared real datasets (../shared/data), as event tables; a missing folder fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
NAB_SERIES = ("machine_temperature_system_failure", "ambient_temperature_system_failure",
              "cpu_utilization_asg_misconfiguration", "nyc_taxi")


def shared(*parts: str) -> Path:
    """A path under ../shared/data that must exist (CI has it: never skip without it)."""
    path = SHARED.joinpath(*parts)
    assert path.exists(), f"{path} is missing: the tests read the shared datasets there"
    return path


def _events(frame: pd.DataFrame, prefix: str) -> pa.Table:
    millis = frame["timestamp"].to_numpy("datetime64[ms]").astype(np.int64)
    cols: dict[str, object] = {
        "event_id": [f"{prefix}-{i}" for i in range(len(frame))],
        "sensor_id": frame["sensor_id"].tolist(),
        "event_time": pa.array(millis, pa.int64()),
    }
    for c in frame.columns:
        if c.startswith("readings."):
            cols[c] = pa.array(frame[c].to_numpy(np.float64))
    return pa.table(cols)


def nab() -> pa.Table:
    """The four NAB series as one stream, each sensor's rows in file order, one after another.

    File order keeps machine_temperature's step back in time (12 out-of-order rows).
    """
    frames = []
    for name in NAB_SERIES:
        f = pd.read_csv(shared("nab", "realKnownCause", f"{name}.csv"), parse_dates=["timestamp"])
        frames.append(pd.DataFrame({"timestamp": f["timestamp"], "sensor_id": name,
                                    "readings.value": f["value"].astype(float)}))
    return _events(pd.concat(frames, ignore_index=True), "nab")


def occupancy() -> pa.Table:
    """UCI occupancy, datatest then datatraining (event-time order), five readings per event."""
    parts = [pd.read_csv(shared("uci-occupancy", f), index_col=0, parse_dates=["date"])
             for f in ("datatest.txt", "datatraining.txt")]
    f = pd.concat(parts, ignore_index=True)
    frame = pd.DataFrame({"timestamp": f["date"], "sensor_id": "office"})
    for c in ("Temperature", "Humidity", "Light", "CO2", "HumidityRatio"):
        frame[f"readings.{c}"] = f[c].astype(float)
    return _events(frame, "occ")
