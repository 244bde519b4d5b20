"""Candidate against production with `headwater replay`, on MovieLens 100K and on a NAB
series (streams/candidates.py): the deep models are trained offline on the first part of
each stream, the stream and its outcome labels are written to Parquet (as `headwater
export` would give them), and the replay command's own code compares the candidates side
by side and writes each report (HTML, JSON, PNG).

    python bench/replay_candidates.py [--out .cache/replay-reports] [--data ../shared/data]

- MovieLens 100K (100,000 ratings; label: rating >= 4, due 1 h after the rating):
  production = the engagement model trained on the first 10% of the ratings (3 epochs),
  candidate = trained on the first 20% (3 epochs); a third arm is production's deep model
  with a slower head (SGD 0.002).
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

import orjson
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.candidates import movielens_candidates, nab_candidates  # noqa: E402
from streams.settings import Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "replay-reports")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        s = Settings(registry_dir=tmp / "registry", device="cpu", drift_detector="none",
                     head_horizon="1d", curate_window="1d")
        started = time.perf_counter()
        line = movielens_candidates(s, args.data, tmp, args.out / "movielens")
        print(f"movielens ({time.perf_counter() - started:.0f}s with training): {line}")
        started = time.perf_counter()
        line = nab_candidates(s, args.data, tmp, args.out / "nab")
        print(f"nab ({time.perf_counter() - started:.0f}s with training): {line}")

    print("\n| data | candidate | model | head log loss | head ROC AUC | deep log loss | "
          "deep ROC AUC | labels |\n|---|---|---|---|---|---|---|---|")
    for name, folder in (("MovieLens 100K", "movielens"), ("NAB machine_temperature", "nab")):
        doc = orjson.loads((args.out / folder / "report.json").read_bytes())
        for c in doc["candidates"]:
            h, d = c["head"]["cumulative"], c["deep"]["cumulative"]
            print(f"| {name} | {c['candidate']} | {c['model']} v{c['model_version']} | "
                  f"{h['log_loss']:.4f} | {h['roc_auc']:.4f} | {d['log_loss']:.4f} | "
                  f"{d['roc_auc']:.4f} | {c['labels']:,} |")


if __name__ == "__main__":
    main()
