"""End-to-end latency: event sent -> its prediction received, at steady input rates,
beside a raw aiokafka chain with the same number of hops on the same broker.

    python bench/latency.py [--rates 1000,5000] [--seconds 20] [--sensors 16]

For each rate it replays shuttle events as single JSON messages at that rate into
`sensor-events` of a running worker (ingest -> featurize -> infer -> predictions: three
consume-produce hops after the producer) and reads `predictions` as they come. An
event's latency is the time its prediction is read here minus the Kafka timestamp of
its input message (the producer's create time; one clock, one machine). The ceiling is
the same measure through three plain aiokafka consume -> produce hops, each forwarding
every message as it arrives (consumer `fetch_max_wait_ms` and producer `linger_ms` as
the worker's). The first seconds of the raw chain are a warm-up and are left out; the
worker first gets a warm-up of the same length at the same rate, and the measured events
are sent once all of its predictions are in (a worker that has just started takes
seconds over its first batches: left in, that backlog was most of a 15-second run's
latency). With each rate it prints the median legs of a prediction's trip: to ingest,
ingest to prediction (featurize and infer), and prediction to the reader.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import drop_topics, events_table  # noqa: E402
from models.datasets import shuttle  # noqa: E402
from models.registry import Registry  # noqa: E402
from models.training import train_sensor_model  # noqa: E402
from streams.broker import LocalKafka  # noqa: E402
from streams.produce import sensor_json  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402

WARMUP_S = 3.0
COLLECT_S = 60.0  # a run that has not predicted every event by then fell behind


async def pace(s: Settings, topic: str, values: list[tuple[bytes, bytes]], rate: float,
               stamp: bool = False) -> None:
    """Send (key, value) messages at `rate` per second, in 1 ms slices; with `stamp`, each
    message's send time (ms) goes in its first header (hops rewrite Kafka timestamps)."""
    p = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=0, acks=1)
    await p.start()
    try:
        start, sent = time.perf_counter(), 0
        while sent < len(values):
            due = min(len(values), int((time.perf_counter() - start) * rate) + 1)
            for key, value in values[sent:due]:
                hdrs = [("sent", repr(time.time() * 1000).encode())] if stamp else None
                await p.send(topic, value, key=key, headers=hdrs)
            sent = due
            await asyncio.sleep(0.001)
        await p.flush()
    finally:
        await p.stop()


async def collect(s: Settings, topic: str, n: int, timeout: float, key: str | None,
                  legs: list[tuple[float, float, float]] | None = None,
                  out: list[float] | None = None) -> np.ndarray:
    """Latencies (ms) of the first n messages on `topic`: read time minus the source
    time (from the prediction's `source_time`, or the message's own timestamp chain).
    `legs`, for predictions, gets each one's (ingest - source, predict - ingest,
    read - predict) times; `out` (given) fills as they come."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=s.bootstrap, group_id=f"lat-{uuid.uuid4()}",
                         auto_offset_reset="earliest", fetch_max_wait_ms=5)
    await c.start()
    out = [] if out is None else out
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            polled = await c.getmany(timeout_ms=100)
            now = time.time() * 1000
            for recs in polled.values():
                for r in recs:
                    doc = orjson.loads(r.value) if key else None
                    src = doc[key] if doc else float(r.headers[0][1])
                    out.append(now - src)
                    if doc and legs is not None:
                        legs.append((doc["ingest_time"] - src, doc["predict_time"]
                                     - doc["ingest_time"], now - doc["predict_time"]))
        return np.array(out)
    finally:
        await c.stop()


async def hop(s: Settings, src: str, dst: str, ready: asyncio.Event, stop: asyncio.Event
              ) -> None:
    """Forward every message of `src` to `dst` as soon as it is read (the raw ceiling)."""
    c = AIOKafkaConsumer(src, bootstrap_servers=s.bootstrap, group_id=f"hop-{uuid.uuid4()}",
                         auto_offset_reset="earliest", fetch_max_wait_ms=5)
    p = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=s.producer_linger_ms,
                         acks="all")
    await c.start()
    await p.start()
    try:
        while not c.assignment():
            await asyncio.sleep(0.05)
        ready.set()
        while not stop.is_set():
            for recs in (await c.getmany(timeout_ms=50)).values():
                for r in recs:
                    await p.send(dst, r.value, key=r.key, headers=list(r.headers))
    finally:
        await c.stop()
        await p.stop()


async def raw_chain(s: Settings, tag: str, values: list[tuple[bytes, bytes]], rate: float
                    ) -> np.ndarray:
    names = [f"{tag}-raw{i}" for i in range(4)]
    await ensure_topics(s.model_copy(update={"topic_prefix": ""}), tuple(names))
    stop, joined = asyncio.Event(), [asyncio.Event() for _ in names[1:]]
    hops = [asyncio.create_task(hop(s, a, b, j, stop))
            for a, b, j in zip(names, names[1:], joined, strict=False)]
    reader = asyncio.create_task(collect(s, names[-1], len(values), 120, None))
    await asyncio.gather(*(j.wait() for j in joined))  # before the clock starts
    await pace(s, names[0], values, rate, stamp=True)
    lat = await reader
    stop.set()
    await asyncio.gather(*hops)
    return lat


async def headwater(s: Settings, warm: list[tuple[bytes, bytes]],
                    values: list[tuple[bytes, bytes]], rate: float,
                    legs: list[tuple[float, float, float]]) -> np.ndarray:
    """Latencies of `values` sent at `rate` once the predictions of `warm` (sent first, at
    the same rate) are all in; `legs` gets theirs."""
    got: list[float] = []
    reader = asyncio.create_task(collect(s, s.topic("predictions"), len(warm) + len(values),
                                         2 * COLLECT_S, "source_time", legs, got))
    await pace(s, s.topic("sensor-events"), warm, rate)
    deadline = time.monotonic() + COLLECT_S
    while len(got) < len(warm) and time.monotonic() < deadline and not reader.done():
        await asyncio.sleep(0.05)
    if len(got) < len(warm):
        raise SystemExit(f"the worker predicted {len(got):,} of {len(warm):,} warm-up events "
                         f"within {COLLECT_S:.0f} s")
    await pace(s, s.topic("sensor-events"), values, rate)
    lat = await reader
    del legs[:len(warm)]
    return lat[len(warm):]


def summary(lat: np.ndarray, rate: float, n_warm: int) -> str:
    steady = lat[n_warm:]
    return (f"p50 {np.percentile(steady, 50):7.1f} ms  p99 {np.percentile(steady, 99):7.1f} ms"
            f"  max {steady.max():7.1f} ms  ({len(steady):,} events)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="1000,5000")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--sensors", type=int, default=16)
    args = ap.parse_args()

    base = Settings()
    node = LocalKafka(base.kafka_home, base.kafka_port, base.kafka_controller_port)
    started = node.pid() is None
    node.start()
    work = Path(tempfile.mkdtemp(prefix="hw-latency-"))
    tag = f"lat{uuid.uuid4().hex[:6]}"
    try:
        train_sensor_model(shuttle(sensors=args.sensors), Registry(work / "registry"),
                           "shuttle", config=base.sensor_features(), epochs=4)
        print(f"Kafka on {base.bootstrap}, {base.partitions} partitions, producer linger "
              f"{base.producer_linger_ms} ms, infer wait {base.infer_max_wait_ms} ms")
        for rate in (float(r) for r in args.rates.split(",")):
            n = int(rate * args.seconds)
            warm = int(rate * WARMUP_S)
            table = events_table(warm + n, args.sensors)
            keys = table.column("sensor_id").to_pylist()
            sent = [(k.encode(), v) for k, v in zip(keys, sensor_json(table), strict=True)]
            values = sent[warm:]
            raw = asyncio.run(raw_chain(base, f"{tag}-{int(rate)}", values, rate))
            s = base.model_copy(update={"topic_prefix": f"{tag}-{int(rate)}-",
                                        "app_id": f"{tag}-{int(rate)}",
                                        "registry_dir": work / "registry",
                                        "data_dir": work / f"worker-{int(rate)}"})
            asyncio.run(ensure_topics(s))
            env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")} \
                | s.to_env()
            log = work / f"worker-{int(rate)}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-l",
                                         "info"], cwd=ROOT, env=env, stdout=out,
                                        stderr=subprocess.STDOUT)
                try:
                    wait_ready(s, proc)
                    legs: list[tuple[float, float, float]] = []
                    got = asyncio.run(headwater(s, sent[:warm], values, rate, legs))
                    print(stages(s))
                finally:
                    proc.terminate()
                    proc.wait(60)
            print(f"{rate:6.0f} ev/s  raw aiokafka, 3 hops : {summary(raw, rate, warm)}")
            print(f"{rate:6.0f} ev/s  headwater worker     : {summary(got, rate, 0)}")
            if legs:
                p50 = np.percentile(np.array(legs), 50, axis=0)
                print(f"    p50 legs: to ingest {p50[0]:.1f} ms, ingest to prediction "
                      f"(featurize, infer) {p50[1]:.1f} ms, prediction to reader {p50[2]:.1f} ms")
            if len(got) < n:
                print(f"    fell behind: {len(got):,} of {n:,} predictions within "
                      f"{COLLECT_S:.0f} s of the start (log: {log})")
    finally:
        asyncio.run(drop_topics(base, tag))
        if started:
            node.stop()


def stages(s: Settings) -> str:
    """Batches, rows per batch and time per batch of each stage, from the worker."""
    import urllib.request

    with urllib.request.urlopen(f"http://{s.web_host}:{s.web_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    got: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        for metric in ("headwater_stage_seconds", "headwater_batch_rows"):
            for part in ("_sum", "_count"):
                if line.startswith(metric + part + "{"):
                    label = line.split('"')[1]
                    got[(metric + part, label)] = float(line.rsplit(" ", 1)[1])
    out = []
    for stage in ("ingest", "featurize", "infer"):
        n = got.get(("headwater_stage_seconds_count", stage), 0)
        if n:
            secs = got[("headwater_stage_seconds_sum", stage)] / n * 1000
            rows = got.get(("headwater_batch_rows_sum", stage), 0) / max(
                got.get(("headwater_batch_rows_count", stage), 1), 1)
            out.append(f"{stage} {n:,.0f} batches of {rows:,.1f} rows, {secs:.2f} ms each")
    return "    worker: " + "; ".join(out)


def wait_ready(s: Settings, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the worker exited before it was ready")
        try:
            with urllib.request.urlopen(f"http://{s.web_host}:{s.web_port}/ready",
                                        timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the worker was not ready in time")


if __name__ == "__main__":
    main()
