"""The learn stage's labels/s (a `Trainer` feeding a `Head`) beside river alone, for each
learner spec, on Elec2, measured in the same run; snapshot sizes and times; publish time.

    python bench/learn.py [--limit 10000] [--repeat 3] [--delay-ms 1800000]
                          [--spec GaussianNB --spec ...] [--clock cpu|wall]
                          [--bootstrap HOST:PORT] [--topic hw-bench-model-updates]

Data: Elec2 (../shared/data/elec2), its first --limit rows in order; x is the seven
readings as a dict (day, period, nswprice, nswdemand, vicprice, vicdemand, transfer).
Classifiers learn y = `label` (the price went up); regressors learn y = the NSW price of
the next row (half an hour later), so the last row has no label and is left out.
- river alone (the ceiling): a fresh model, `p = predict_proba_one(x)` (`predict_one`
  for a regressor) then `learn_one(x, y)`, row by row;
- river+metrics: the same loop also updating the head's six prequential metrics and its
  drift detector (river's own objects): the ceiling for the head's work, beside the
  bare model's, so the table tells the cost of the metrics from that of the rest;
- floor: river alone plus the head's own metrics (`models.scores`) and drift detector,
  and nothing else (no ordering, no join, no bookkeeping): the fastest a head that scores
  and learns each label in turn, as `progressive_val_score` does, could be with these
  metrics, so floor/river bounds headwater/river;
- headwater: a fresh `Trainer(Head(...))` with the default `HeadConfig` (prequential
  LogLoss/ROCAUC/Accuracy or MAE/RMSE, cumulative and rolling over 1000 labels, ADWIN on
  the errors) fed as the learn stage feeds it, less Kafka: the questions of 256 rows
  (`question(t, id, x)`), `step(256)` until done, their labels (`label(t + delay, id,
  y)`), `step(256)` until done, and so on; then `flush()`;
- snapshot: after the whole stream, the size of `head.model_bytes()` (what goes to
  model-updates) and `trainer.checkpoint()` (head, metrics, detector, kept events, order
  buffers) and the time to make each (best of 3);
- publish (with --bootstrap): `send_and_wait` of the model bytes to --topic (created
  compacted with a 64 MiB message limit, as headwater's model-updates) by a producer set
  as the learn stage's (acks=all, idempotent, no compression; linger 0 here), best of
  3 after one warm-up send.
Rates are labels per second of --clock: `cpu` (default) is this process's CPU time
(`time.process_time`), which other processes on a shared machine disturb far less than
the wall clock; each figure is the best of --repeat runs, the four loops taking turns
within each run. Needs river and pyarrow; aiokafka only with --bootstrap.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from river import metrics, utils  # noqa: E402

from models.datasets import ELEC2_READINGS, elec2  # noqa: E402
from models.head import Head, HeadConfig  # noqa: E402
from models.online import EXAMPLE_SPECS, build_learner, task_of  # noqa: E402
from models.trainer import Trainer  # noqa: E402
from streams.learn import STEP  # noqa: E402

SPECS = EXAMPLE_SPECS
TARGET = 0.8  # headwater's labels/s over river's, at least


@dataclass
class Stream:
    """One task's rows, decoded before any timing starts."""

    ids: list[str]
    times: list[int]
    xs: list[dict[str, float]]
    ys: list[Any]


def streams(root: Path, limit: int | None) -> dict[str, Stream]:
    t = elec2(root, limit)
    cols = {r: t.column(f"readings.{r}").to_pylist() for r in ELEC2_READINGS}
    xs = [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]
    ids = t.column("event_id").to_pylist()
    times = t.column("event_time").to_pylist()
    labels = [bool(v) for v in t.column("label").to_pylist()]
    price = cols["nswprice"]
    return {"classification": Stream(ids, times, xs, labels),
            "regression": Stream(ids[:-1], times[:-1], xs[:-1], price[1:])}


def river_alone(spec: str, s: Stream) -> None:
    model = build_learner(spec)
    predict = model.predict_proba_one if task_of(model) == "classification" \
        else model.predict_one
    learn = model.learn_one
    for x, y in zip(s.xs, s.ys, strict=True):
        predict(x)
        learn(x, y)


def river_scored(spec: str, s: Stream) -> None:
    """river alone plus the head's work in river's own objects: its six prequential
    metrics (LogLoss, ROCAUC, Accuracy or MAE, RMSE, cumulative and `utils.Rolling`, as
    `evaluate.progressive_val_score` updates its metrics) and its drift detector on the
    errors. The head keeps the same metrics in `models.scores` (equal to these)."""
    like = Head("bench", HeadConfig(spec=spec))
    model, detector = like.model, like.detector
    kinds: dict[str, Any] = ({"log_loss": metrics.LogLoss, "roc_auc": metrics.ROCAUC,
                              "accuracy": metrics.Accuracy}
                             if like.task == "classification"
                             else {"mae": metrics.MAE, "rmse": metrics.RMSE})
    objects = [*(m() for m in kinds.values()),
               *(utils.Rolling(m, window_size=like.config.rolling) for m in kinds.values())]
    updates = [(isinstance(getattr(m, "obj", m), metrics.Accuracy), m.update)
               for m in objects]
    classifier = like.task == "classification"
    predict = model.predict_proba_one if classifier else model.predict_one
    learn = model.learn_one
    for x, y in zip(s.xs, s.ys, strict=True):
        p = predict(x)
        if classifier and p:
            label = max(p, key=p.get)
            for hard, update in updates:
                update(y, label if hard else p)
            if detector is not None:
                detector.update(float(label != y))
        elif not classifier and p is not None:
            for _, update in updates:
                update(y, p)
            if detector is not None:
                detector.update(abs(y - p))
        learn(x, y)


def floor(spec: str, s: Stream) -> None:
    """river alone plus the head's own scores and detector (see the module doc)."""
    like = Head("bench", HeadConfig(spec=spec))
    model, detector, update = like.model, like.detector, like.scores.update
    classifier = like.task == "classification"
    predict = model.predict_proba_one if classifier else model.predict_one
    learn = model.learn_one
    for x, y in zip(s.xs, s.ys, strict=True):
        p = predict(x)
        if p is not None and p != {}:
            error = update(y, p)
            if detector is not None and math.isfinite(error):
                detector.update(error)
        learn(x, y)


def headwater(spec: str, s: Stream, delay: int) -> Trainer:
    """The learn stage's work less Kafka: questions and labels in messages of STEP rows
    (as infer and ingest send them), the head stepped after each, as `Learn.handle`."""
    trainer = Trainer(Head("bench", HeadConfig(spec=spec)))

    def handled() -> None:  # one message: step until nothing more is ready
        trainer.step(STEP)
        while trainer.more:
            trainer.step(STEP)

    rows = list(zip(s.ids, s.times, s.xs, s.ys, strict=True))
    for start in range(0, len(rows), STEP):
        chunk = rows[start:start + STEP]
        for event_id, t, x, _ in chunk:
            trainer.question(t, event_id, x)
        handled()
        for event_id, t, _, y in chunk:
            trainer.label(t + delay, event_id, float(y))
        handled()
    trainer.flush()
    return trainer


def best_of(fn: Callable[[], object], repeat: int, clock: Callable[[], float]
            ) -> tuple[float, object]:
    """The shortest of `repeat` calls (seconds of `clock`) and the last call's result."""
    best, got = float("inf"), None
    for _ in range(repeat):
        t0 = clock()
        got = fn()
        best = min(best, clock() - t0)
    return best, got


@dataclass
class Row:
    spec: str
    rows: int
    river: float  # labels/s
    scored: float
    floor: float
    head: float
    model_bytes: bytes
    model_ms: float
    checkpoint_size: int
    checkpoint_ms: float
    publish_ms: float | None = None


def measure(spec: str, s: Stream, delay: int, repeat: int, clock: Callable[[], float]
            ) -> Row:
    n = len(s.ys)
    river_s, scored_s, floor_s, head_s = (float("inf"),) * 4
    trainer: Trainer | None = None
    for _ in range(repeat):  # turns, so that a busy spell hits all three
        t0 = clock()
        river_alone(spec, s)
        river_s = min(river_s, clock() - t0)
        t0 = clock()
        river_scored(spec, s)
        scored_s = min(scored_s, clock() - t0)
        t0 = clock()
        floor(spec, s)
        floor_s = min(floor_s, clock() - t0)
        t0 = clock()
        trainer = headwater(spec, s, delay)
        head_s = min(head_s, clock() - t0)
    assert trainer is not None
    head = trainer.head
    if head.updates != n:
        raise SystemExit(f"{spec}: the head learned {head.updates} of {n} labels "
                         f"(counts {head.counts}): is --delay-ms past the horizon?")
    model_s, raw = best_of(head.model_bytes, 3, time.perf_counter)
    ckpt_s, ckpt = best_of(trainer.checkpoint, 3, time.perf_counter)
    assert isinstance(raw, bytes) and isinstance(ckpt, bytes)
    return Row(spec, n, n / river_s, n / scored_s, n / floor_s, n / head_s, raw, model_s * 1000,
               len(ckpt), ckpt_s * 1000)


async def publish(rows: list[Row], bootstrap: str, topic: str) -> None:
    """Time `send_and_wait` of each row's model bytes (one warm-up send first)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    from streams.topics import MAX_MESSAGE_BYTES

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(
            topic, 1, 1, topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES),
                                        "cleanup.policy": "compact"})])
        for name, code, *_ in resp.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                raise SystemExit(f"cannot create topic {name}: error code {code}")
    finally:
        await admin.close()
    # as the learn stage's producer (streams/learn.py), less its 5 ms linger
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, compression_type=None, linger_ms=0,
                                max_request_size=MAX_MESSAGE_BYTES)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up", key=b"bench")
        for row in rows:
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                await producer.send_and_wait(topic, row.model_bytes, key=row.spec.encode())
                best = min(best, time.perf_counter() - t0)
            row.publish_ms = best * 1000
    finally:
        await producer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "elec2")
    ap.add_argument("--limit", type=int, default=10_000, help="Elec2 rows (all: 45312)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--delay-ms", type=int, default=1_800_000,
                    help="label delay in stream time (rows are 30 min apart)")
    ap.add_argument("--spec", action="append", dest="specs",
                    help="a learner spec; repeat it for several (default: the seven above)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--bootstrap", help="HOST:PORT: also time publishing the model bytes")
    ap.add_argument("--topic", default="hw-bench-model-updates")
    args = ap.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    specs = args.specs or list(SPECS)

    data = streams(args.data, args.limit)
    print(f"Elec2, first {len(data['classification'].ys)} rows; label delay "
          f"{args.delay_ms} ms; labels/s of {args.clock} time, best of {args.repeat}; "
          f"python {sys.version.split()[0]}")
    rows: list[Row] = []
    for spec in specs:
        rows.append(measure(spec, data[task_of(build_learner(spec))], args.delay_ms,
                            args.repeat, clock))
    if args.bootstrap:
        asyncio.run(publish(rows, args.bootstrap, args.topic))

    w = max(len(s) for s in specs)
    print(f"{'spec':<{w}} {'rows':>6} {'river labels/s':>14} {'headwater labels/s':>18} "
          f"{'hw/river':>8} {f'>= {TARGET}':>6}  {'river+metrics labels/s':>22} "
          f"{'hw/(river+metrics)':>18} {'floor labels/s':>14} {'floor/river':>11}")
    for r in rows:
        ratio = r.head / r.river
        print(f"{r.spec:<{w}} {r.rows:>6} {r.river:>14,.0f} {r.head:>18,.0f} {ratio:>8.2f} "
              f"{'yes' if ratio >= TARGET else 'NO':>6}  {r.scored:>22,.0f} "
              f"{r.head / r.scored:>18.2f} {r.floor:>14,.0f} {r.floor / r.river:>11.2f}")
    print()
    print(f"{'spec':<{w}} {'model bytes':>11} {'make ms':>8} {'checkpoint bytes':>16} "
          f"{'make ms':>8} {'publish ms':>10}")
    for r in rows:
        pub = f"{r.publish_ms:>10.2f}" if r.publish_ms is not None else "not measured"
        print(f"{r.spec:<{w}} {len(r.model_bytes):>11,} {r.model_ms:>8.2f} "
              f"{r.checkpoint_size:>16,} {r.checkpoint_ms:>8.2f} {pub:>10}")


if __name__ == "__main__":
    main()
