"""Soak: the worker at a fraction of its own capacity for a long while (a benchmark, not CI).

    python bench/soak.py [--seconds 600] [--load 0.8] [--backlog 150000]

It starts the local broker (ops/) unless one answers already, trains the shuttle model
to a temporary registry, and starts a worker on fresh topics. The worker's capacity is
measured first, in the same run, with a producer beside it as in the soak: a backlog of
shuttle events preloaded before the worker starts gives the drain rate (10% to 90% of
its predictions), then Arrow batches at twice that rate for `--probe` seconds give what
the worker predicts while a producer shares the machine (over the last two thirds); that
is the capacity. Then Arrow batches of shuttle events go to `sensor-events` at `--load`
x the capacity for `--seconds`, in sends of the probe's size (the worker has a fixed
cost per message and per poll, so smaller sends would lower its capacity), with a line
of lag and RSS every 30 s, and at the end
the least-squares slopes over the whole soak and its second half: lag (events sent but
not yet predicted, per minute), RSS (MiB per minute); the peak RSS (VmHWM), the capacity
and the rate driven. A steady worker shows slopes about zero.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.datasets import shuttle  # noqa: E402
from models.registry import Registry  # noqa: E402
from models.training import train_sensor_model  # noqa: E402
from streams.broker import LocalKafka  # noqa: E402
from streams.load import (  # noqa: E402
    MIB,
    Producer,
    Sample,
    Sampler,
    ShuttleEvents,
    drain_rate,
    slope,
    tally_predictions,
)
from streams.settings import Settings  # noqa: E402
from streams.topics import drop_topics, ensure_topics  # noqa: E402

REPORT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait(condition: Callable[[], bool], timeout: float, what: str,
         alive: subprocess.Popen[bytes]) -> None:
    """Poll `condition` until it holds; fail after `timeout` s or if the worker exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if alive.poll() is not None:
            raise RuntimeError(f"the worker exited ({alive.returncode}) waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def line(x: Sample, t0: float) -> str:
    return (f"t={x.t - t0:5.0f}s  lag {x.behind:>9,} events ({x.lag:>5,} messages)  "
            f"RSS {x.rss / MIB:6,.0f} MiB  peak {x.hwm / MIB:6,.0f} MiB  "
            f"predicted {x.predicted:>11,}")


def slopes(samples: list[Sample]) -> tuple[float, float, float]:
    """(events lag, messages lag, RSS MiB) slopes per minute over `samples`."""
    mins = [x.t / 60 for x in samples]
    return (slope(mins, [x.behind for x in samples]), slope(mins, [x.lag for x in samples]),
            slope(mins, [x.rss / MIB for x in samples]))


PROBE_TICK = 0.05  # seconds between the probe's sends


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600, help="how long to soak")
    ap.add_argument("--load", type=float, default=0.8, help="fraction of the capacity")
    ap.add_argument("--backlog", type=int, default=150_000,
                    help="events preloaded to measure the capacity")
    ap.add_argument("--sensors", type=int, default=16)
    ap.add_argument("--probe", type=float, default=90,
                    help="seconds at twice the drain rate to measure the capacity")
    args = ap.parse_args()

    base = Settings()
    node = LocalKafka(base.kafka_home, base.kafka_port, base.kafka_controller_port)
    started = node.pid() is None and not node.answers()
    node.start()
    work = Path(tempfile.mkdtemp(prefix="hw-soak-"))
    tag = uuid.uuid4().hex[:6]
    registry = Registry(work / "registry")
    train_sensor_model(shuttle(sensors=args.sensors), registry, "shuttle",
                       config=base.sensor_features(), epochs=4)
    s = base.model_copy(update={
        "bootstrap": node.bootstrap, "topic_prefix": f"soak{tag}-", "app_id": f"soak{tag}",
        "registry_dir": work / "registry", "data_dir": work / "worker",
        "web_port": free_port(), "session_timeout_ms": 6000})
    producer = Producer(s, ShuttleEvents(sensors=args.sensors, prefix=f"soak{tag}"))
    proc: subprocess.Popen[bytes] | None = None
    sampler: Sampler | None = None
    try:
        asyncio.run(ensure_topics(s))
        producer.run(lambda: producer.preload(args.backlog))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")} \
            | s.to_env()
        log = work / "worker.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-l",
                                     "warn"], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        pid = proc.pid
        smp = sampler = Sampler(s, pid=lambda: pid, acked=lambda: producer.acked).start()
        wait(lambda: smp.last.predicted >= args.backlog and smp.last.lag == 0, 600,
             "the preloaded backlog to be worked off", proc)
        drained = drain_rate(smp.samples, 0, args.backlog)
        print(f"drain rate {drained:,.0f} events/s ({args.backlog:,} preloaded events, 10-90% "
              f"of their predictions, nothing producing)", flush=True)
        # capacity: what the worker predicts while a producer runs beside it on this box,
        # given more than it can take (twice the drain rate), over the last two thirds
        begin = smp.now()
        producer.run(lambda: producer.drive(2 * drained, args.probe, tick=PROBE_TICK))
        stop = smp.now()
        probe = [x for x in smp.since(begin + args.probe / 3) if x.t <= stop]
        capacity = (probe[-1].predicted - probe[0].predicted) / (probe[-1].t - probe[0].t)
        wait(lambda: smp.last.t > stop and smp.last.behind <= 0 and smp.last.lag == 0, 900,
             "the worker to work off the probe's backlog", proc)
        rate = args.load * capacity
        # sends of the probe's size: the worker's cost per message and per poll is fixed,
        # so smaller sends would lower the capacity the soak runs against
        tick = PROBE_TICK * 2 * drained / rate
        print(f"capacity {capacity:,.0f} events/s (predicted while driven at "
              f"{2 * drained:,.0f}/s for {args.probe:.0f} s); soaking {args.seconds:.0f} s "
              f"at {rate:,.0f} events/s ({args.load:.0%}, a send every {tick:.2f} s), "
              f"Kafka on {s.bootstrap}, worker "
              f"log {log}", flush=True)

        async def soak() -> float:
            t0 = smp.now()

            async def report() -> None:
                k = 1
                while True:
                    await asyncio.sleep(max(0.0, t0 + k * REPORT_S - smp.now()))
                    print(line(smp.last, t0), flush=True)
                    k += 1
            task = asyncio.create_task(report())
            try:
                return await producer.drive(rate, args.seconds, tick=tick)
            finally:
                task.cancel()

        start = smp.now()
        achieved = producer.run(soak)
        end = smp.now()
        during = [x for x in smp.since(start) if x.t <= end]
        half = [x for x in during if x.t >= (start + end) / 2]
        wait(lambda: smp.last.t > end and smp.last.behind <= 0 and smp.last.lag == 0, 600,
             "the worker to finish the soak's events", proc)
        caught_up = smp.now() - end
        distinct, duplicates, foreign = asyncio.run(
            tally_predictions(s, f"soak{tag}", producer.sent))

        whole, second = slopes(during), slopes(half)
        print(f"\ndrain rate              {drained:12,.0f} events/s (nothing producing)")
        print(f"capacity                {capacity:12,.0f} events/s (a producer beside it)")
        print(f"rate driven             {rate:12,.0f} events/s ({args.load:.0%}; achieved "
              f"{achieved:,.0f}) for {args.seconds:.0f} s, {producer.sent:,} events")
        print(f"lag slope               {whole[0]:12,.1f} events/min "
              f"(second half {second[0]:,.1f}); messages {whole[1]:,.2f}/min "
              f"(second half {second[1]:,.2f})")
        print(f"lag                     max {max(x.behind for x in during):,} events, "
              f"{max(x.lag for x in during):,} messages; mean "
              f"{sum(x.behind for x in during) / len(during):,.0f} events")
        print(f"RSS slope               {whole[2]:12,.2f} MiB/min (second half "
              f"{second[2]:,.2f})")
        print(f"RSS                     {during[0].rss / MIB:,.0f} MiB at the start, "
              f"{during[-1].rss / MIB:,.0f} MiB at the end")
        print(f"peak RSS (VmHWM)        {max(x.hwm for x in during) / MIB:12,.0f} MiB")
        print(f"after the producer stopped: lag 0 in {caught_up:,.1f} s; predictions "
              f"{distinct:,} of {producer.sent:,} events, {duplicates} duplicates, "
              f"{foreign} others; worker alive: {proc.poll() is None}")
    finally:
        if sampler is not None:
            sampler.stop()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        asyncio.run(drop_topics(s))
        if started:
            node.stop()


if __name__ == "__main__":
    main()
