"""Featurize throughput for sensor and engagement streams, beside the raw aiokafka
ceilings measured on the same broker in the same run, and featurize state memory.

    python bench/features.py [--events 200000] [--sensors 16] [--repeat 3]
                             [--memory-events 2000000] [--entities 1000000]
    python bench/features.py --pure [--pure-sensors 16,1000] [--pure-takes 64,714,4096]

It starts the local broker (ops/) unless one answers already. For each stream it
preloads the input topic with single-event JSON messages:
  - sensor: `sensor-events`, shuttle readings (e2e.events_table: 9 readings an event,
    1 s apart, dealt round-robin to --sensors sensors);
  - engagement: `engagement-events`, MovieLens 100K ratings (from ../shared/data, read
    in place) repeated to --events with fresh event ids, each copy's event times shifted
    past the previous copy's end (nothing late, nothing duplicate), keyed by user;
and measures, --repeat times (the median is printed):
  1. raw aiokafka consume-only of the input (getmany, no decoding);
  2. raw aiokafka consume -> produce pass-through of every message to another topic;
  3. the headwater worker, ingest -> featurize, as feature rows / (latest Kafka
     timestamp of a `features` message - earliest `ingest_time` of a feature row), over
     the messages whose `feature_set` is the stream's. The worker runs infer too (sensor
     features are scored, engagement ones counted unscored) in the same process.
Then, in-process without Kafka, the memory of featurize state:
  4. engagement state for --entities users and items (--memory-events synthetic
     impressions and clicks, batches of 4096), measured with tracemalloc in the form the
     worker's `engagement-state` table holds it (key `"<partition>/" + escaped key`,
     value the JSON str of {"asof", "prev", "cur", "format"}), and as bare `cur` lists;
  5. sensor state per sensor (the JSON str of `dump_state`) for the default windows.
With --pure, only the sensor feature function itself, without Kafka or a worker: rows/s
of `sensor_features` over takes of each --pure-takes rows of e2e.events_table (one event
a second, dealt round-robin to each --pure-sensors sensors), states carried from take to
take as featurize carries them, after 10,000 rows that fill every sensor's buffer (an
hour and five minutes); the best of 3 passes over the next 20,000 rows.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import e2e  # noqa: E402

from models.datasets import movielens, shuttle  # noqa: E402
from models.engagement import (  # noqa: E402
    ENGAGEMENT_FEATURE_SET,
    EngagementConfig,
    EntityState,
    engagement_features,
)
from models.features import (  # noqa: E402
    FEATURE_SET,
    SensorConfig,
    SensorState,
    dump_state,
    sensor_features,
)
from models.registry import Registry  # noqa: E402
from models.training import train_sensor_model  # noqa: E402
from schemas.codec import read_ipc  # noqa: E402
from streams.broker import LocalKafka  # noqa: E402
from streams.produce import produce_table  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402

MOVIELENS = ROOT.parent / "shared" / "data" / "movielens-100k"
PASS = "raw aiokafka consume->produce pass-through"
BATCH = 4096
TARGET_RATIO = 0.5
TARGET_BYTES = 1024
T = TypeVar("T")


def engagement_table(n: int) -> pa.Table:
    """MovieLens ratings repeated to `n` rows: fresh ids, each copy after the one before."""
    base = movielens(MOVIELENS)
    times = base.column("event_time")
    span = pc.max(times).as_py() - pc.min(times).as_py() + 1000
    copies = []
    for k in range(-(-n // base.num_rows)):
        c = base.set_column(base.schema.get_field_index("event_time"), "event_time",
                            pc.add(times, pa.scalar(k * span, pa.int64())))
        copies.append(c)
    t = pa.concat_tables(copies).slice(0, n)
    return t.set_column(0, "event_id", pa.array([f"ml-{i:07d}" for i in range(n)]))


async def feature_span(s: Settings, feature_set: str, n: int, deadline: float,
                       alive: Callable[[], bool]) -> float:
    """Feature rows / (latest `features` message timestamp - earliest row ingest_time)."""
    topic = s.topic("features")
    c = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False,
                         max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)
    await c.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(s.partitions)]
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        got, first_ingest, last_sent = 0, None, 0
        while got < n:
            if time.monotonic() > deadline or not alive():
                raise RuntimeError(f"only {got} of {n} feature rows (worker alive: {alive()})")
            for recs in (await c.getmany(timeout_ms=500, max_records=1000)).values():
                for r in recs:
                    t = read_ipc(r.value)
                    if (t.schema.metadata or {}).get(b"feature_set") != feature_set.encode():
                        continue
                    ing = pc.min(t.column("ingest_time")).as_py()
                    first_ingest = ing if first_ingest is None else min(first_ingest, ing)
                    last_sent = max(last_sent, r.timestamp)
                    got += t.num_rows
        assert first_ingest is not None
        return float(got / ((last_sent - first_ingest) / 1000))
    finally:
        await c.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stage_seconds(s: Settings) -> dict[str, float]:
    """Seconds each stage of the worker has spent on batches (its /metrics)."""
    url = f"http://{s.web_host}:{s.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as page:
        text = page.read().decode()
    return {x.labels["stage"]: x.value for family in text_string_to_metric_families(text)
            if family.name == "headwater_stage_seconds" for x in family.samples
            if x.name.endswith("_sum")}


def run_featurize(s: Settings, feature_set: str, n: int, log: Path
                  ) -> tuple[float, dict[str, float]]:
    """Run `headwater worker` on the run's preloaded input until `n` feature rows are out:
    events/s, and the seconds each stage was busy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")} | s.to_env()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-l", "warn"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            rate = asyncio.run(feature_span(s, feature_set, n, time.monotonic() + 600,
                                            lambda: proc.poll() is None))
            return rate, stage_seconds(s)
        finally:
            proc.terminate()
            proc.wait(60)


def synthetic_engagement(n: int, entities: int, seed: int = 0) -> Iterator[pa.RecordBatch]:
    """`n` impressions and clicks (10%) of exactly `entities` users and items, in order."""
    rng = np.random.default_rng(seed)

    def ids() -> np.ndarray:
        every = np.concatenate([np.arange(entities), rng.integers(0, entities, n - entities)])
        return rng.permutation(every)

    users, items = ids(), ids()
    categories = np.array(["Action", "Comedy", "Drama", "Horror", "Music", "News", "Sport",
                           "Travel"])
    for i in range(0, n, BATCH):
        m = min(BATCH, n - i)
        yield pa.record_batch({
            "event_id": pa.array([f"ev-{j:08d}" for j in range(i, i + m)]),
            "user_id": pa.array(users[i:i + m].astype(str)),
            "item_id": pa.array(items[i:i + m].astype(str)),
            "category": pa.array(categories[rng.integers(0, len(categories), m)]),
            "event_time": pa.array(1_700_000_000_000 + np.arange(i, i + m) * 50, pa.int64()),
            "kind": pa.array(np.where(rng.random(m) < 0.1, "click", "impression")),
            "value": pa.array(np.ones(m)),
        })


def traced(build: Callable[[], T]) -> tuple[T, int]:
    """What `build` returns, and the bytes it holds (tracemalloc, after a collection)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        made = build()
        gc.collect()
        return made, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def engagement_memory(n: int, entities: int, config: EngagementConfig
                      ) -> tuple[list[str], str]:
    """Lines on the bytes per engagement state, as the table holds it and bare; a summary."""
    cur: dict[str, EntityState] = {}
    held: dict[str, tuple[int, EntityState | None]] = {}  # asof, prev
    started = time.perf_counter()
    gc.disable()  # millions of live lists: collections would dominate the build
    try:
        for offset, batch in enumerate(synthetic_engagement(n, entities)):
            _, after = engagement_features(batch, cur, config)
            for k in after:
                held[k] = (offset, cur.get(k))
            cur.update(after)
    finally:
        gc.enable()
    took = time.perf_counter() - started
    users = sum(k.startswith("u:") for k in cur)
    items = sum(k.startswith("i:") for k in cur)
    pairs = len(cur) - users - items

    def table_form() -> dict[str, str]:  # as featurize_engagement writes it (partition 0)
        return {"0/" + k.encode("unicode_escape").decode(): orjson.dumps(
            {"asof": held[k][0], "prev": held[k][1], "cur": v,
             "format": config.state_format}).decode() for k, v in cur.items()}

    table, table_bytes = traced(table_form)
    value_chars = sum(len(v) for v in table.values()) / len(table)
    del table
    bare, bare_bytes = traced(lambda: orjson.loads(orjson.dumps(cur)))
    del bare
    per_entry, per_bare = table_bytes / len(cur), bare_bytes / len(cur)
    per_entity = table_bytes / (users + items)
    verdict = "ok" if per_entity <= TARGET_BYTES else "ABOVE TARGET"
    return [
        f"engagement state: {n:,} events in {took:.0f} s ({n / took:,.0f}/s in-process) -> "
        f"{users:,} users, {items:,} items, {pairs:,} user x category; "
        f"{len(config.half_lives_s)} half-lives; one partition's table",
        f"  table form (key + JSON str value + dict slot): {per_entry:,.0f} B per state "
        f"({value_chars:.0f} chars a value); {per_entity:,.0f} B per user or item, user x "
        f"category states counted to their users (target <= {TARGET_BYTES:,} B: {verdict})",
        f"  bare cur lists (key + list[float] + dict slot): {per_bare:,.0f} B per state",
    ], (f"  {'engagement state (table form)':<34} | {per_entry:>7,.0f} B a state, "
        f"{per_entity:,.0f} B a user or item (target <= {TARGET_BYTES:,} B: {verdict})")


def sensor_memory(sensors: int, config: SensorConfig) -> tuple[list[str], str]:
    """A line on the bytes of one sensor's state (the JSON str the table holds); a summary."""
    n = int(1.25 * config.horizon_ms / 1000 * sensors)  # past the horizon: eviction runs
    events = e2e.events_table(n, sensors).drop_columns(["label"])
    states: dict[str, SensorState] = {}
    asof: dict[str, int] = {}
    for offset, batch in enumerate(events.to_batches(BATCH)):
        _, after, _ = sensor_features(batch, states, config)
        states.update(after)
        asof.update(dict.fromkeys(after, offset))

    def table_form() -> dict[str, str]:  # as featurize writes it
        return {k: dump_state(s, asof=asof[k], format=config.state_format).decode()
                for k, s in states.items()}

    table, held = traced(table_form)
    chars = statistics.mean(len(v) for v in table.values())
    rows = statistics.mean(len(s["t"]) for s in states.values())
    per = held / len(table)
    return [f"sensor state (key + JSON str value + dict slot): {per:,.0f} B per sensor "
            f"({chars:,.0f} chars of JSON; {rows:.0f} buffered events of 9 readings: "
            f"{config.horizon_ms // 60000} min horizon at one event per {sensors} s)"], \
        f"  {'sensor state (table form)':<34} | {per:>7,.0f} B a sensor"


def pure_sensor(sensors: int, take: int, warm: int = 10_000, timed: int = 20_000) -> float:
    """Rows/s of `sensor_features` alone, in takes of `take` rows (see the module doc)."""
    config = Settings().sensor_features()
    table = e2e.events_table(warm + timed, sensors)
    batches = [table.slice(i, take).combine_chunks().to_batches()[0]
               for i in range(0, warm + timed, take)]
    first = -(-warm // take)
    best = float("inf")
    for _ in range(3):
        states: dict[str, SensorState] = {}
        for b in batches[:first]:
            states.update(sensor_features(b, states, config)[1])
        t0 = time.perf_counter()
        for b in batches[first:]:
            states.update(sensor_features(b, states, config)[1])
        best = min(best, time.perf_counter() - t0)
    return sum(b.num_rows for b in batches[first:]) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--sensors", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory-events", type=int, default=2_000_000)
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--pure", action="store_true",
                    help="only the sensor feature function, no broker (see the doc)")
    ap.add_argument("--pure-sensors", default="16,1000")
    ap.add_argument("--pure-takes", default="64,714,4096")
    args = ap.parse_args()
    if args.pure:
        print("sensor_features alone, rows/s (best of 3), by sensors and rows per take")
        for sensors in map(int, args.pure_sensors.split(",")):
            for take in map(int, args.pure_takes.split(",")):
                print(f"  {sensors:>6,} sensors  takes of {take:>5,} rows  "
                      f"{pure_sensor(sensors, take):>9,.0f} rows/s")
        return
    wall = time.perf_counter()

    base = Settings()
    node = LocalKafka(base.kafka_home, base.kafka_port, base.kafka_controller_port)
    started = node.pid() is None
    node.start()
    work = Path(tempfile.mkdtemp(prefix="hw-bench-features-"))
    tag = uuid.uuid4().hex[:6]
    streams = {"sensor": ("sensor-events", FEATURE_SET),
               "engagement": ("engagement-events", ENGAGEMENT_FEATURE_SET)}
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in streams}
    done = False
    try:
        train_sensor_model(shuttle(sensors=args.sensors), Registry(work / "registry"), "shuttle",
                           config=base.sensor_features(), epochs=4)
        s = base.model_copy(update={"topic_prefix": f"bench{tag}-",
                                    "registry_dir": work / "registry"})
        asyncio.run(ensure_topics(s))
        tables = {"sensor": e2e.events_table(args.events, args.sensors),
                  "engagement": engagement_table(args.events)}
        for name, (topic, _) in streams.items():
            t0 = time.perf_counter()
            asyncio.run(produce_table(s, tables[name], s.topic(topic), chunk=5000))
            print(f"preloaded {args.events:,} JSON {name} events in {s.topic(topic)} "
                  f"({args.events / (time.perf_counter() - t0):,.0f}/s)")
        print(f"{args.sensors} sensors, {s.partitions} partitions, Kafka on {s.bootstrap}; "
              f"the worker runs ingest, featurize and infer in one process")
        for i in range(args.repeat):
            for name, (topic, feature_set) in streams.items():
                runs = figures[name]
                runs.setdefault("raw aiokafka consume-only", []).append(
                    asyncio.run(e2e.raw_rate(s, s.topic(topic), args.events)))
                out = f"bench{tag}-pass-{name}-{i}"
                asyncio.run(ensure_topics(s.model_copy(update={"topic_prefix": ""}), (out,)))
                runs.setdefault(PASS, []).append(
                    asyncio.run(e2e.raw_rate(s, s.topic(topic), args.events, out)))
                run = s.model_copy(update={"app_id": f"bench{tag}-{name}-{i}",
                                           "topic_prefix": f"bench{tag}-{name}{i}-",
                                           "web_port": free_port(),
                                           "data_dir": work / f"worker-{name}-{i}"})
                asyncio.run(ensure_topics(run))
                asyncio.run(produce_table(run, tables[name], run.topic(topic), chunk=5000))
                t0 = time.perf_counter()
                rate, busy = run_featurize(run, feature_set, args.events,
                                           work / f"{name}-{i}.log")
                runs.setdefault(f"headwater ingest+featurize ({feature_set})", []).append(rate)
                stages = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(busy.items()))
                print(f"{name} run {i + 1}: {rate:,.0f} events/s over {args.events / rate:.1f} s "
                      f"({time.perf_counter() - t0:.0f} s with start-up); stage seconds "
                      f"(batch wall time, awaits included): {stages}")

        summary = []
        for name, runs in figures.items():
            print(f"\n{name} ({args.events:,} events)")
            print(f"  {'path':<48} {'events/s (median)':>18}   runs")
            for path, vals in runs.items():
                runs_text = ", ".join(f"{v:,.0f}" for v in vals)
                print(f"  {path:<48} {statistics.median(vals):>18,.0f}   {runs_text}")
            ceiling = statistics.median(runs[PASS])
            featurize = statistics.median(runs[next(p for p in runs if p.startswith("head"))])
            summary.append((name, featurize, featurize / ceiling))

        print()
        eng_lines, eng_summary = engagement_memory(args.memory_events, args.entities,
                                                   base.engagement_features())
        sensor_lines, sensor_summary = sensor_memory(args.sensors, base.sensor_features())
        print(*eng_lines, *sensor_lines, sep="\n")

        print(f"\nsummary (target: featurize >= {TARGET_RATIO} x the pass-through ceiling)")
        print(f"  {'path':<34} | {'events/s':>9} | x pass-through ceiling")
        for name, rate, ratio in summary:
            mark = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
            print(f"  {name + ' ingest+featurize':<34} | {rate:>9,.0f} | {ratio:.3f} ({mark})")
        print(eng_summary, sensor_summary, sep="\n")
        done = True
    finally:
        asyncio.run(e2e.drop_topics(base, f"bench{tag}"))
        if started:
            node.stop()
        if done:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"worker logs kept in {work}")
        print(f"\ntook {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
