"""Real datasets as event tables in event-time order (no Kafka here).

`movielens` reads GroupLens' MovieLens 100K from a folder outside the repository (its
terms forbid redistributing it): the 100,000 ratings as engagement events. `nab` and
`occupancy` read the NAB series and UCI occupancy data the same way, as sensor events.

The demo's dataset is NASA's shuttle sensor readings as packaged in the `river` wheel
(`river/datasets/shuttle.csv.gz`, UCI Statlog Shuttle in its ODDS anomaly form: nine
readings `f1`..`f9` and an `anomaly` label, about 7% positive). It has no timestamps, so
row order is event order, one second apart; rows are dealt round-robin to `sensors`
simulated sensors so that the stream spreads over partitions.

>>> t = shuttle(limit=5, sensors=2)
>>> t.column("sensor_id").to_pylist()
['shuttle-0', 'shuttle-1', 'shuttle-0', 'shuttle-1', 'shuttle-0']
>>> t.column("label").to_pylist()
[1, 0, 0, 0, 1]
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

__all__ = ["DATASETS", "SHUTTLE_START_MS", "elec2", "movielens", "nab", "occupancy", "shuttle"]

SHUTTLE_START_MS = 1_388_534_400_000  # 2014-01-01T00:00:00Z, an arbitrary origin


def shuttle(limit: int | None = None, sensors: int = 4) -> pa.Table:
    """The shuttle dataset as sensor events: ids, event time, `readings.f1..f9`, label."""
    path = resources.files("river").joinpath("datasets", "shuttle.csv.gz")
    with path.open("rb") as f, gzip.open(f) as csv:
        raw = pv.read_csv(csv, read_options=pv.ReadOptions(use_threads=False))
    if limit is not None:
        raw = raw.slice(0, limit)
    n = raw.num_rows
    idx = np.arange(n)
    cols: dict[str, pa.Array] = {
        "event_id": pa.array([f"shuttle-{i:06d}" for i in idx]),
        "sensor_id": pa.array([f"shuttle-{i % sensors}" for i in idx]),
        "event_time": pa.array(SHUTTLE_START_MS + idx * 1000, pa.int64()),
    }
    for name in raw.schema.names:
        if name != "anomaly":
            cols[f"readings.{name}"] = raw.column(name).cast(pa.float64())
    cols["label"] = raw.column("anomaly").cast(pa.int8())
    return pa.table(cols)


def movielens(root: Path, limit: int | None = None) -> pa.Table:
    """MovieLens 100K ratings as engagement events, in event-time order.

    Reads `root/u.data.gz` (user, item, rating, Unix seconds), sorted by time with a
    stable sort (file order among equal times), and `root/u.item` with `root/u.genre`
    for each item's category: the name of its first set genre flag ("unknown" counts as
    a name; null if none is set). `limit` keeps the first events in time order. Columns:
    `event_id` ("ml-" + row index in the file), `user_id`, `item_id`, `category`,
    `event_time` (ms), `kind` ("rating"), `value` (the rating).

    >>> root = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"
    >>> t = movielens(root, limit=3)
    >>> t.column("event_id").to_pylist(), t.column("category").to_pylist()
    (['ml-214', 'ml-83965', 'ml-43027'], ['Comedy', 'Drama', 'Action'])
    >>> t.column("event_time").to_pylist()[0], t.column("value").to_pylist()[0]
    (874724710000, 4.0)
    """
    ratings = pv.read_csv(
        root / "u.data.gz",
        read_options=pv.ReadOptions(column_names=["user_id", "item_id", "rating", "timestamp"],
                                    use_threads=False),
        parse_options=pv.ParseOptions(delimiter="\t"))
    order = np.argsort(ratings.column("timestamp").to_numpy(), kind="stable")
    if limit is not None:
        order = order[:limit]
    ratings = ratings.take(pa.array(order))

    named = (line.split("|") for line in
             (root / "u.genre").read_text(encoding="latin-1").splitlines() if line.strip())
    genres = [name for name, _ in sorted(named, key=lambda pair: int(pair[1]))]
    by_item: dict[int, str] = {}
    for line in (root / "u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        if len(fields) < 5 + len(genres):
            continue
        flags = fields[5:5 + len(genres)]
        if "1" in flags:
            by_item[int(fields[0])] = genres[flags.index("1")]
    known = pc.index_in(ratings.column("item_id"), value_set=pa.array(list(by_item)))
    return pa.table({
        "event_id": pc.binary_join_element_wise(
            "ml-", pa.array(order).cast(pa.string()), ""),
        "user_id": ratings.column("user_id").cast(pa.string()),
        "item_id": ratings.column("item_id").cast(pa.string()),
        "category": pa.array(list(by_item.values()), pa.string()).take(known),
        "event_time": pc.multiply(ratings.column("timestamp").cast(pa.int64()), 1000),
        "kind": pa.array(["rating"] * len(order), pa.string()),
        "value": ratings.column("rating").cast(pa.float64()),
    })


NAB_SERIES = ("machine_temperature_system_failure", "ambient_temperature_system_failure",
              "cpu_utilization_asg_misconfiguration", "nyc_taxi")
OCCUPANCY_READINGS = ("Temperature", "Humidity", "Light", "CO2", "HumidityRatio")


def _sensor_table(times: pa.Array, sensors: list[str], readings: dict[str, pa.Array],
                  prefix: str, label: pa.Array | None = None) -> pa.Table:
    n = len(times)
    cols: dict[str, pa.Array] = {
        "event_id": pc.binary_join_element_wise(
            f"{prefix}-", pa.array(np.arange(n)).cast(pa.string()), ""),
        "sensor_id": pa.array(sensors, pa.string()),
        "event_time": times.cast(pa.timestamp("ms")).cast(pa.int64()),
    }
    cols |= {f"readings.{k}": v.cast(pa.float64()) for k, v in readings.items()}
    if label is not None:
        cols["label"] = label.cast(pa.int8())
    return pa.table(cols)


def nab(root: Path, labelled: bool = False) -> pa.Table:
    """Four series of the Numenta Anomaly Benchmark (`root/realKnownCause/*.csv`) as one
    stream: each file is a sensor (its stem the id, one reading `value`), its rows in
    file order, one sensor after another. File order keeps machine_temperature's step
    back in time, twelve rows that arrive 5 to 55 minutes late. With `labelled`,
    `label` = the row is inside one of NAB's anomaly windows
    (`root/labels/combined_windows.json`, bounds included)."""
    windows = orjson.loads((root / "labels" / "combined_windows.json").read_bytes()) \
        if labelled else {}
    times, sensors, values, labels = [], [], [], []
    for name in NAB_SERIES:
        t = pv.read_csv(root / "realKnownCause" / f"{name}.csv",
                        read_options=pv.ReadOptions(use_threads=False))
        ts = t.column("timestamp").combine_chunks()
        times.append(ts)
        values.append(t.column("value").cast(pa.float64()).combine_chunks())
        sensors += [name] * t.num_rows
        if labelled:
            ms = ts.cast(pa.timestamp("ms")).cast(pa.int64()).to_numpy()
            inside = np.zeros(len(ms), bool)
            for start, end in windows[f"realKnownCause/{name}.csv"]:
                lo, hi = (np.datetime64(v.replace(" ", "T"), "ms").astype(np.int64)
                          for v in (start, end))
                inside |= (ms >= lo) & (ms <= hi)
            labels.append(pa.array(inside))
    return _sensor_table(pa.concat_arrays(times), sensors,
                         {"value": pa.concat_arrays(values)}, "nab",
                         pa.concat_arrays(labels) if labelled else None)


def occupancy(root: Path) -> pa.Table:
    """UCI Occupancy Detection (`root/datatest.txt` then `root/datatraining.txt`, which is
    event-time order): one office sensor, five readings a minute, `label` = occupied."""
    names = ["row_id", "date", *OCCUPANCY_READINGS, "Occupancy"]
    parts = [pv.read_csv(root / f, read_options=pv.ReadOptions(
        skip_rows=1, column_names=names, use_threads=False))
        for f in ("datatest.txt", "datatraining.txt")]
    t = pa.concat_tables(parts)
    return _sensor_table(t.column("date").combine_chunks(), ["office"] * t.num_rows,
                         {r: t.column(r).combine_chunks() for r in OCCUPANCY_READINGS},
                         "occ", t.column("Occupancy").combine_chunks())


ELEC2_READINGS = ("day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand",
                  "transfer")
ELEC2_START_MS = 831_427_200_000  # 1996-05-07T00:00:00Z


def elec2(root: Path, limit: int | None = None) -> pa.Table:
    """Elec2 (`root/elecNormNew.csv.gz`, MOA's normalised file, no header) as one sensor's
    events: the seven readings, event time rebuilt as 1996-05-07 + 30 min x row (the
    data README's rule), `label` = the price went UP.

    >>> root = Path(__file__).resolve().parents[2] / "shared" / "data" / "elec2"
    >>> t = elec2(root, limit=2)
    >>> t.column("event_time").to_pylist(), t.column("label").to_pylist()
    ([831427200000, 831429000000], [1, 1])
    """
    names = ["date", *ELEC2_READINGS, "class"]
    t = pv.read_csv(root / "elecNormNew.csv.gz", read_options=pv.ReadOptions(
        column_names=names, use_threads=False))
    if limit is not None:
        t = t.slice(0, limit)
    times = pa.array(ELEC2_START_MS + np.arange(t.num_rows, dtype=np.int64) * 1_800_000)
    label = pc.equal(t.column("class"), "UP").combine_chunks()
    return _sensor_table(times.cast(pa.timestamp("ms")), ["elec2"] * t.num_rows,
                         {r: t.column(r).combine_chunks() for r in ELEC2_READINGS},
                         "elec2", label)


DATASETS = {"shuttle": shuttle}
