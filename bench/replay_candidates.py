"""Candidate against production with `headwater replay`, on MovieLens 100K and on a NAB
series: the deep models are trained offline on the first part of each stream, the
stream and its outcome labels are written to Parquet (as `headwater export` would give
them), and the replay command's own code (`streams.replay.run`) compares the candidates
side by side and writes each report (HTML, JSON, PNG).

    python bench/replay_candidates.py [--out .cache/replay-reports] [--data ../shared/data]

- MovieLens 100K (100,000 ratings; label: rating >= 4, due 1 h after the rating):
  production = the engagement model trained on the first 10% of the ratings (3 epochs),
  candidate = trained on the first 20% (3 epochs); a third arm is production's deep model
  with a faster head (SGD 0.002 picked in the README's online-value section).
- NAB machine_temperature_system_failure (22,695 readings; label: inside an anomaly
  window, due 1 h late): production = the sensor model trained on the first 50% (2
  epochs, 2 members), candidate = the same data, 10 epochs and 5 members.

The datasets are read in place and never copied here. Prints one line per replay and a
table of the final cumulative metrics.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.datasets import movielens, nab  # noqa: E402
from models.registry import Registry  # noqa: E402
from models.training import train_engagement_model, train_sensor_model  # noqa: E402
from streams.export import Range  # noqa: E402
from streams.produce import outcome_labels  # noqa: E402
from streams.replay import Candidate, run  # noqa: E402
from streams.settings import Settings  # noqa: E402

HOUR = 3_600_000


def labels_table(events: pa.Table, delay_ms: int) -> pa.Table:
    """The outcome labels `headwater produce --labels-delay` sends, as ingest decodes them."""
    rows = [{"event_id": e, "value": v, "source": "outcome", "label_time": t, "model": None}
            for t, e, v in ((t, e, __import__("orjson").loads(raw)["value"])
                            for t, e, raw in outcome_labels(events, delay_ms))]
    return pa.Table.from_pylist(rows)


def write(t: pa.Table, path: Path) -> str:
    pq.write_table(t, path)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "replay-reports")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args()
    cpu = torch.device("cpu")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        s = Settings(registry_dir=tmp / "registry", device="cpu", drift_detector="none",
                     head_horizon="1d")
        registry = Registry(s.registry_dir)
        summary = []

        ml = movielens(args.data / "movielens-100k")
        ml = ml.take(pc.sort_indices(ml, [("event_time", "ascending")]))
        n = ml.num_rows
        for fraction in (0.1, 0.2):
            train_engagement_model(ml.slice(0, int(n * fraction)), registry,
                                   config=s.engagement_features(), epochs=3, seed=0,
                                   device=cpu)
        started = time.perf_counter()
        line = run(s, write(ml, tmp / "ml.parquet"),
                   write(labels_table(ml, HOUR), tmp / "ml-labels.parquet"), Range(),
                   [Candidate("production", "movielens", 1),
                    Candidate("candidate", "movielens", 2),
                    Candidate.parse("production-sgd0.002=movielens:1@StandardScaler | "
                                    "LogisticRegression(optimizer=SGD(0.002))")],
                   args.out / "movielens", every=1000)
        print(f"movielens ({time.perf_counter() - started:.0f}s): {line}")
        summary.append(("MovieLens 100K", args.out / "movielens"))

        series = nab(args.data / "nab", labelled=True)
        series = series.filter(pc.equal(series.column("sensor_id"),
                                        "machine_temperature_system_failure"))
        half = series.slice(0, series.num_rows // 2)
        train_sensor_model(half, registry, "nab", config=s.sensor_features(), epochs=2,
                           members=2, device=cpu)
        train_sensor_model(half, registry, "nab", config=s.sensor_features(), epochs=10,
                           members=5, device=cpu)
        started = time.perf_counter()
        line = run(s.model_copy(update={"sensor_model": "nab"}),
                   write(series.drop_columns(["label"]), tmp / "nab.parquet"),
                   write(labels_table(series, HOUR), tmp / "nab-labels.parquet"), Range(),
                   [Candidate("production", "nab", 1), Candidate("candidate", "nab", 2)],
                   args.out / "nab", every=500)
        print(f"nab ({time.perf_counter() - started:.0f}s): {line}")
        summary.append(("NAB machine_temperature", args.out / "nab"))

    import orjson

    print("\n| data | candidate | model | head log loss | head ROC AUC | deep log loss | "
          "deep ROC AUC | labels |\n|---|---|---|---|---|---|---|---|")
    for name, folder in summary:
        doc = orjson.loads((folder / "report.json").read_bytes())
        for c in doc["candidates"]:
            h, d = c["head"]["cumulative"], c["deep"]["cumulative"]
            print(f"| {name} | {c['candidate']} | {c['model']} v{c['model_version']} | "
                  f"{h['log_loss']:.4f} | {h['roc_auc']:.4f} | {d['log_loss']:.4f} | "
                  f"{d['roc_auc']:.4f} | {c['labels']:,} |")


if __name__ == "__main__":
    main()
