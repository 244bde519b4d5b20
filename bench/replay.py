"""Replay throughput: `headwater replay` from Parquet beside the live pipeline on the same
events, measured in the same run.

    python bench/replay.py [--events 50000] [--sensors 16]

It starts the local broker (ops/) unless one answers, trains the shuttle model, and
preloads `sensor-events` with shuttle events (the dataset repeated with fresh ids) and
`labels` with their outcome labels (due 1 minute late). Then:
  1. live: a `headwater worker` (ingest, featurize, infer, learn) on those topics, as
     events / (last prediction time - first ingest time), as bench/e2e.py measures it;
  2. export: both topics to Parquet with `streams.export.export_range`;
  3. replay: `read_export` of both and `streams.replay.replay` (featurize, infer and
     learn, curate in process) with the same model and head, events / wall time of read+replay.
The target (issue 7) is replay at least 10 x the live pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from e2e import drop_topics, events_table, run_worker  # noqa: E402

from models.registry import Registry  # noqa: E402
from models.training import train_sensor_model  # noqa: E402
from streams.broker import LocalKafka  # noqa: E402
from streams.export import Range, export_range, read_export  # noqa: E402
from streams.produce import produce_table  # noqa: E402
from streams.replay import Candidate, replay  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--sensors", type=int, default=16)
    args = ap.parse_args()

    base = Settings()
    node = LocalKafka(base.kafka_home, base.kafka_port, base.kafka_controller_port)
    started = node.pid() is None
    node.start()
    work = Path(tempfile.mkdtemp(prefix="hw-bench-replay-"))
    tag = uuid.uuid4().hex[:6]
    try:
        registry = Registry(work / "registry")
        table = events_table(args.events, args.sensors)
        train_sensor_model(table, registry, "shuttle", config=base.sensor_features(), epochs=2)
        s = base.model_copy(update={"topic_prefix": f"bench{tag}-", "app_id": f"bench{tag}",
                                    "registry_dir": work / "registry", "curate": False,
                                    "data_dir": work / "worker"})
        asyncio.run(ensure_topics(s))
        asyncio.run(produce_table(s, table, s.topic("sensor-events"), chunk=5000,
                                  labels_delay_ms=60_000))
        print(f"preloaded {args.events:,} JSON events and their labels, {args.sensors} "
              f"sensors, {s.partitions} partitions, Kafka on {s.bootstrap}")
        live = run_worker(s, args.events, "json", work / "worker.log")
        print(f"live pipeline (ingest -> featurize -> infer -> predictions, learn on): "
              f"{live:,.0f} events/s")
        t0 = time.perf_counter()
        for topic in ("sensor-events", "labels"):
            asyncio.run(export_range(s, topic, Range(), work / "export"))
        print(f"export of both topics to Parquet: {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        events = read_export(work / "export" / "sensor-events")
        labels = read_export(work / "export" / "labels")
        got = replay(events, labels, [Candidate("production", "shuttle")], s, every=5000)
        wall = time.perf_counter() - t0
        rate = args.events / wall
        arm = got.arms[0]
        print(f"replay from Parquet (read, featurize, infer, learn, curate): {rate:,.0f} events/s "
              f"({wall:.1f}s; {arm.summary['labels']:,} labels scored; stages "
              + ", ".join(f"{k} {v:.1f}s" for k, v in got.seconds.items()) + ")")
        print(f"replay / live: {rate / live:.1f} x (target >= 10 x)")
    finally:
        asyncio.run(drop_topics(base, f"bench{tag}"))
        if started:
            node.stop()


if __name__ == "__main__":
    main()
