"""`headwater produce`: replay a dataset into a topic in event-time order, at a rate.

Sensor events go out as one JSON SensorEvent per message keyed by sensor id (what any
producer would send), or, with `fmt="arrow"`, as Arrow batches partitioned by sensor.
A table with a `user_id` column is engagement events, keyed by user.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from schemas.codec import READING_PREFIX, write_ipc
from schemas.events import ARROW, JSON, headers
from streams.outbox import Outbox
from streams.settings import Settings

__all__ = ["engagement_json", "produce_table", "sensor_json"]

ENGAGEMENT_FIELDS = ("event_id", "user_id", "item_id", "event_time", "kind", "value",
                     "category")


def engagement_json(t: pa.Table) -> list[bytes]:
    """One EngagementEvent JSON document per row of an engagement table.

    >>> t = pa.table({"event_id": ["e"], "user_id": ["u"], "item_id": ["i"],
    ...               "event_time": [7], "kind": ["rating"], "value": [4.0],
    ...               "category": [None]})
    >>> engagement_json(t)
    [b'{"event_id":"e","user_id":"u","item_id":"i","event_time":7,"kind":"rating","value":4.0}']
    """
    names = [n for n in ENGAGEMENT_FIELDS if n in t.schema.names]
    rows = zip(*(t.column(n).to_pylist() for n in names), strict=True)
    return [orjson.dumps({k: v for k, v in zip(names, row, strict=True) if v is not None})
            for row in rows]


def sensor_json(t: pa.Table) -> list[bytes]:
    """One SensorEvent JSON document per row of an event table.

    >>> t = pa.table({"event_id": ["e"], "sensor_id": ["s"], "event_time": [7],
    ...               "readings.x": [1.5], "label": [0]})
    >>> sensor_json(t)
    [b'{"event_id":"e","sensor_id":"s","event_time":7,"readings":{"x":1.5}}']
    """
    names = [n for n in t.schema.names if n.startswith(READING_PREFIX)]
    short = [n.removeprefix(READING_PREFIX) for n in names]
    cols = [t.column(n).to_pylist() for n in names]
    return [
        orjson.dumps({"event_id": e, "sensor_id": s, "event_time": et,
                      "readings": {k: v for k, v in zip(short, vals, strict=True)
                                   if v is not None}})
        for e, s, et, *vals in zip(t.column("event_id").to_pylist(),
                                   t.column("sensor_id").to_pylist(),
                                   t.column("event_time").to_pylist(), *cols, strict=True)
    ]


def outcome_labels(table: pa.Table, delay_ms: int, positive: float = 4.0
                   ) -> list[tuple[int, str, bytes]]:
    """(due time, event id, label.v1 JSON) of each event, due `delay_ms` after it, in due
    order: a sensor table's `label` column, or whether an engagement event is a positive
    (a rating of at least `positive`, a click or a purchase).

    >>> t = pa.table({"event_id": ["a"], "event_time": [5], "label": [1]})
    >>> outcome_labels(t, 10)[0][2]
    b'{"event_id":"a","value":1,"source":"outcome","label_time":15}'
    """
    ids = table.column("event_id").to_pylist()
    times = table.column("event_time").to_pylist()
    if "label" in table.schema.names:
        values = table.column("label").to_pylist()
    else:
        kinds, ratings = table.column("kind").to_pylist(), table.column("value").to_pylist()
        values = [int(k in ("click", "purchase") or (k == "rating" and (r or 0) >= positive))
                  for k, r in zip(kinds, ratings, strict=True)]
    out = [(t + delay_ms, e, orjson.dumps({"event_id": e, "value": v, "source": "outcome",
                                           "label_time": t + delay_ms}))
           for e, t, v in zip(ids, times, values, strict=True) if v is not None]
    return sorted(out, key=lambda x: x[0])


async def produce_table(settings: Settings, table: pa.Table, topic: str, *, rate: float = 0,
                        fmt: str = "json", chunk: int = 2000,
                        progress: Callable[[int], object] | None = None,
                        labels_delay_ms: int | None = None) -> int:
    """Send every row of `table` (in its order) to `topic`; returns the number sent.

    `rate` is events per second (0: as fast as the broker takes them). With
    `labels_delay_ms`, each event's outcome label goes to `labels`, due that long after
    the event and sent once the replay has passed its due time (the rest at the end).
    """
    due = outcome_labels(table, labels_delay_ms, settings.positive_rating) \
        if labels_delay_ms is not None else []
    next_label = 0
    labels_topic = settings.topic("labels")
    engagement = "user_id" in table.schema.names
    key, to_json = ("user_id", engagement_json) if engagement else ("sensor_id", sensor_json)
    schema = "engagement-event.v1" if engagement else "sensor-event.v1"
    outbox = Outbox(settings)
    await outbox.start()
    sent = 0
    started = time.monotonic()
    try:
        pending = []
        for i in range(0, table.num_rows, chunk):
            part = table.slice(i, chunk)
            if fmt == "arrow":
                pending += await _send_arrow(outbox, part, topic, key, headers(ARROW, schema))
            else:
                pending += await outbox.send_keyed(
                    topic, part.column(key).to_pylist(), to_json(part), headers(JSON, schema))
            sent += part.num_rows
            if due:
                now = pc.max(part.column("event_time")).as_py()
                upto = next_label
                while upto < len(due) and due[upto][0] <= now:
                    upto += 1
                pending += await outbox.send_keyed(
                    labels_topic, [e for _, e, _ in due[next_label:upto]],
                    [v for _, _, v in due[next_label:upto]], headers(JSON, "label.v1"))
                next_label = upto
            if progress:
                progress(part.num_rows)
            if len(pending) > 64:
                await asyncio.gather(*pending)
                pending = []
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        if next_label < len(due):
            pending += await outbox.send_keyed(
                labels_topic, [e for _, e, _ in due[next_label:]],
                [v for _, _, v in due[next_label:]], headers(JSON, "label.v1"))
        await asyncio.gather(*pending)
    finally:
        await outbox.stop()
    return sent


async def _send_arrow(outbox: Outbox, part: pa.Table, topic: str, key: str,
                      hdrs: list[tuple[str, bytes]]) -> list[asyncio.Future[object]]:
    parts = await outbox.partitions(topic)
    entities = part.column(key)
    by_partition: dict[int, list[str]] = {}
    for s in pc.unique(entities).to_pylist():
        by_partition.setdefault(outbox.partition(s.encode(), parts), []).append(s)
    cols = [n for n in part.schema.names if n != "label"]
    out = []
    for p, keys in by_partition.items():
        rows = part.filter(pc.is_in(entities, pa.array(keys))).select(cols)
        out.append(await outbox.send(topic, write_ipc(rows), partition=p, headers=hdrs))
    return out
