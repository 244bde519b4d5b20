"""The inference stage's rows/s by batch size, on CPU and (when present) CUDA, beside the
bare-torch ceiling for the same model measured in the same run.

    python bench/inference.py [--batches 1,8,64,512,4096,16384] [--devices cpu,cuda]
                              [--precision fp32] [--seconds 1.0]

The model is the sensor ensemble (5 members, 32x32) over the sensor.v2 features of 9
readings (216 columns), with random weights: speed does not depend on training.
- bare torch: a random float32 [B, F] host tensor -> device -> model -> host, in
  `torch.inference_mode()`;
- stage: what infer does to a micro-batch of B rows, less Kafka: an Arrow feature table ->
  `collate` -> `BatchScorer.score` (pinned staging, non-blocking copy, member
  probabilities, entropy and variance); "+JSON" adds encoding the prediction.v1
  documents that infer then sends.
Each figure is rows/s over --seconds of back-to-back calls after a warm-up, with the p50
and p99 of one call's time. Needs only torch, numpy, pyarrow and orjson (no broker).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.features import SensorConfig, feature_names  # noqa: E402
from models.inference import BatchScorer, collate  # noqa: E402
from models.sensor import SensorMLP  # noqa: E402
from schemas.predictions import predictions_json  # noqa: E402

READINGS = [f"f{i}" for i in range(9)]


def timed(fn: Callable[[], object], seconds: float, sync: bool) -> tuple[float, float, float]:
    """Calls/s and the p50/p99 (ms) of one call, over `seconds` after three warm-ups."""
    for _ in range(3):
        fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return len(times) / (ms.sum() / 1000), float(np.percentile(ms, 50)), \
        float(np.percentile(ms, 99))


def bare(model: torch.nn.Module, host: torch.Tensor, device: torch.device) -> None:
    """The ceiling: host tensor -> device -> model -> host."""
    with torch.inference_mode():
        model(host.to(device)).cpu()


def stage(scorer: BatchScorer, table: pa.Table, manifest: dict[str, object],
          encode: bool) -> None:
    """The infer stage less Kafka: feature table -> collate -> score (-> prediction JSON)."""
    x, _ = collate(table, manifest)
    s = scorer.score(x)
    if encode:
        predictions_json(table, s.probability, s.uncertainty, s.variance, ("shuttle", 1), 0)


def feature_table(rows: int, names: list[str], rng: np.random.Generator) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "event_id": pa.array([f"ev-{i}" for i in range(rows)]),
        "entity_id": pa.array([f"sensor-{i % 16}" for i in range(rows)]),
        "event_time": pa.array(np.arange(rows, dtype=np.int64)),
        "source_time": pa.array(np.arange(rows, dtype=np.int64)),
        "ingest_time": pa.array(np.arange(rows, dtype=np.int64)),
    }
    for n in names:
        cols[n] = pa.array(rng.standard_normal(rows))
    return pa.table(cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,8,64,512,4096,16384")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    names = feature_names(READINGS, SensorConfig())
    model = SensorMLP(len(names), hidden=(32, 32), members=5).eval()
    manifest = {"feature_names": names}
    rng = np.random.default_rng(0)
    batches = [int(b) for b in args.batches.split(",")]
    devices = [d for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    print(f"sensor ensemble: {len(names)} features, 5 members, hidden 32x32; torch "
          f"{torch.__version__}, CPU threads {args.threads}"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"{'device':<6} {'batch':>6} {'bare torch rows/s':>18} {'stage rows/s':>13} "
          f"{'stage/bare':>10} {'p50 ms':>7} {'p99 ms':>7} {'+JSON rows/s':>13} "
          f"{'p50 ms':>7} {'p99 ms':>7}")
    for dev_name in devices:
        device = torch.device(dev_name)
        on_gpu = device.type == "cuda"
        bare_model = SensorMLP(len(names), hidden=(32, 32), members=5)
        bare_model.load_state_dict(model.state_dict())
        bare_model = bare_model.to(device).eval()
        scorer = BatchScorer(model, device, args.precision)
        stage_rates: dict[int, float] = {}
        for b in batches:
            host = torch.randn(b, len(names))

            table = feature_table(b, names, rng)
            bare_rate = timed(partial(bare, bare_model, host, device), args.seconds,
                              on_gpu)[0] * b
            calls, p50, p99 = timed(partial(stage, scorer, table, manifest, False),
                                    args.seconds, on_gpu)
            stage_rates[b] = calls * b
            j_calls, j50, j99 = timed(partial(stage, scorer, table, manifest, True),
                                      args.seconds, on_gpu)
            print(f"{dev_name:<6} {b:>6} {bare_rate:>18,.0f} {stage_rates[b]:>13,.0f} "
                  f"{stage_rates[b] / bare_rate:>10.2f} {p50:>7.3f} {p99:>7.3f} "
                  f"{j_calls * b:>13,.0f} {j50:>7.3f} {j99:>7.3f}")
        if 1 in stage_rates and 4096 in stage_rates:
            print(f"{dev_name}: stage at batch 4096 is {stage_rates[4096] / stage_rates[1]:,.0f}"
                  f" x its per-event (batch 1) rate")


if __name__ == "__main__":
    main()
