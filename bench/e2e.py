"""End-to-end throughput: single-event JSON in `sensor-events` to predictions, beside the
raw aiokafka ceilings measured on the same broker in the same run.

    python bench/e2e.py [--events 200000] [--sensors 16] [--formats json,arrow]

It starts the local broker (ops/) unless one answers already, preloads the input topic
with shuttle events (the dataset repeated with fresh ids), then measures in turn:
  1. raw aiokafka consume-only of the input (getmany, no decoding);
  2. raw aiokafka consume -> produce pass-through of every message to another topic;
  3. the headwater worker (ingest -> featurize -> infer -> predictions), once per
     predictions format, as events / (last prediction time - first ingest time).
Each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.datasets import shuttle  # noqa: E402
from models.registry import Registry  # noqa: E402
from models.training import train_sensor_model  # noqa: E402
from schemas.codec import read_ipc  # noqa: E402
from streams.broker import LocalKafka  # noqa: E402
from streams.produce import produce_table  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402


def events_table(n: int, sensors: int) -> pa.Table:
    base = shuttle(sensors=sensors)
    reps = -(-n // base.num_rows)
    t = pa.concat_tables([base] * reps).slice(0, n)
    idx = range(n)
    t = t.set_column(0, "event_id", pa.array([f"ev-{i:07d}" for i in idx]))
    t = t.set_column(1, "sensor_id", pa.array([f"sensor-{i % sensors}" for i in idx]))
    return t.set_column(2, "event_time", pa.array([1_388_534_400_000 + i * 1000 for i in idx],
                                                  pa.int64()))


def raw_consumer(s: Settings, topic: str) -> AIOKafkaConsumer:
    """A plain aiokafka consumer in a fresh group, fetch sizes as ingest uses them."""
    return AIOKafkaConsumer(topic, bootstrap_servers=s.bootstrap, group_id=f"raw-{uuid.uuid4()}",
                            auto_offset_reset="earliest", enable_auto_commit=False,
                            max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)


async def raw_rate(s: Settings, topic: str, n: int, out: str | None = None) -> float:
    """Events/s of plain aiokafka reading `topic`: consume-only, or with `out`, a
    pass-through that sends every message on (per-message `send`, commit per poll)."""
    c = raw_consumer(s, topic)
    p = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=5, acks="all",
                         max_batch_size=1 << 20)
    await c.start()
    if out is not None:
        await p.start()
    got, t0 = 0, None
    try:
        while got < n:
            polled = await c.getmany(timeout_ms=500, max_records=10_000)
            if polled and t0 is None:
                t0 = time.perf_counter()
            futures = []
            for tp, recs in polled.items():
                got += len(recs)
                if out is None:
                    continue
                for r in recs:
                    futures.append(await p.send(out, r.value, key=r.key, partition=tp.partition,
                                                headers=list(r.headers)))
            if out is not None:
                await asyncio.gather(*futures)
                await c.commit()
        assert t0 is not None
        return n / (time.perf_counter() - t0)
    finally:
        await c.stop()
        await p.stop()


async def prediction_span(s: Settings, n: int, fmt: str, deadline: float,
                          alive: Callable[[], bool]) -> float:
    """Events/s from the first ingest to the last prediction, read from the predictions."""
    topic = s.topic("predictions")
    c = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(s.partitions)]
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        got, first_ingest, last_predict = 0, None, 0
        while got < n:
            if time.monotonic() > deadline or not alive():
                raise RuntimeError(f"only {got} of {n} predictions (worker alive: {alive()})")
            for recs in (await c.getmany(timeout_ms=500, max_records=20_000)).values():
                for r in recs:
                    if fmt == "json":
                        d = orjson.loads(r.value)
                        ing, pred, k = d["ingest_time"], d["predict_time"], 1
                    else:
                        t = read_ipc(r.value)
                        ing = min(t.column("ingest_time").to_pylist())
                        pred = max(t.column("predict_time").to_pylist())
                        k = t.num_rows
                    first_ingest = ing if first_ingest is None else min(first_ingest, ing)
                    last_predict = max(last_predict, pred)
                    got += k
        assert first_ingest is not None
        return float(n / ((last_predict - first_ingest) / 1000))
    finally:
        await c.stop()


async def drop_topics(s: Settings, prefix: str) -> None:
    """Delete the run's topics so repeated runs do not fill the broker's disk."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


def run_worker(s: Settings, n: int, fmt: str, log: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")} | s.to_env()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-l", "warn"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            return asyncio.run(prediction_span(s, n, fmt, time.monotonic() + 600,
                                               lambda: proc.poll() is None))
        finally:
            proc.terminate()
            proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--sensors", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--formats", default="json,arrow")
    args = ap.parse_args()

    base = Settings()
    node = LocalKafka(base.kafka_home, base.kafka_port, base.kafka_controller_port)
    started = node.pid() is None
    node.start()
    work = Path(tempfile.mkdtemp(prefix="hw-bench-"))
    tag = uuid.uuid4().hex[:6]
    try:
        registry = Registry(work / "registry")
        train_sensor_model(shuttle(sensors=args.sensors), registry, "shuttle",
                           config=base.sensor_features(),
                           epochs=4)
        s = base.model_copy(update={"topic_prefix": f"bench{tag}-",
                                    "registry_dir": work / "registry"})
        asyncio.run(ensure_topics(s))
        table = events_table(args.events, args.sensors)
        t0 = time.perf_counter()
        asyncio.run(produce_table(s, table, s.topic("sensor-events"), chunk=5000))
        rate = table.num_rows / (time.perf_counter() - t0)
        print(f"preloaded {args.events:,} JSON events ({rate:,.0f}/s), {args.sensors} sensors, "
              f"{s.partitions} partitions, Kafka on {s.bootstrap}")
        figures: dict[str, list[float]] = {}
        for i in range(args.repeat):
            figures.setdefault("raw aiokafka consume-only", []).append(
                asyncio.run(raw_rate(s, s.topic("sensor-events"), args.events)))
            out = f"bench{tag}-pass-{i}"
            asyncio.run(ensure_topics(s.model_copy(update={"topic_prefix": ""}), (out,)))
            figures.setdefault("raw aiokafka consume->produce pass-through", []).append(
                asyncio.run(raw_rate(s, s.topic("sensor-events"), args.events, out)))
            for fmt in args.formats.split(","):
                run = s.model_copy(update={"app_id": f"bench{tag}-{fmt}-{i}",
                                           "topic_prefix": f"bench{tag}-{fmt}{i}-",
                                           "predictions_format": fmt,
                                           "data_dir": work / f"worker-{fmt}-{i}"})
                asyncio.run(ensure_topics(run))
                asyncio.run(produce_table(run, table, run.topic("sensor-events"), chunk=5000))
                figures.setdefault(f"headwater JSON in -> predictions ({fmt} out)", []).append(
                    run_worker(run, args.events, fmt, work / f"worker-{fmt}-{i}.log"))
        print(f"\n{'path':<48} {'events/s (median)':>18}   runs")
        for name, vals in figures.items():
            runs = ", ".join(f"{v:,.0f}" for v in vals)
            print(f"{name:<48} {statistics.median(vals):>18,.0f}   {runs}")
        ceiling = statistics.median(figures["raw aiokafka consume->produce pass-through"])
        for name, vals in figures.items():
            if name.startswith("headwater"):
                print(f"{name}: {statistics.median(vals) / ceiling:.2f} x the pass-through ceiling")
    finally:
        asyncio.run(drop_topics(base, f"bench{tag}"))
        if started:
            node.stop()


if __name__ == "__main__":
    main()
