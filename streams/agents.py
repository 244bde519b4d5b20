"""The featurize and infer agents: thin loops over batch messages calling pure functions.

Each Kafka message on `sensor-batches` and `features` is one Arrow batch of hundreds to
thousands of events (DESIGN.md §6), so Faust's per-message cost is paid per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from aiokafka.errors import KafkaError
from faust import App
from faust.types import TP, StreamT

from models.engagement import engagement_features, engagement_state_keys
from models.features import dump_state, load_state, sensor_features
from schemas.codec import METADATA as SENSOR_META
from schemas.codec import Rejected, sensor_batch
from schemas.engagement_codec import engagement_batch
from schemas.events import ARROW, headers
from streams.gaps import Gaps
from streams.infer import chunks, infer_batch, route
from streams.metrics import (
    BATCH_ROWS,
    DUPLICATES,
    EVENTS,
    REPLAYED,
    STAGE_SECONDS,
    STATE_RESETS,
)
from streams.outbox import Outbox, now_ms
from streams.serving import Serving
from streams.settings import Settings

__all__ = ["resume", "wire_agents", "write_durably"]

log = logging.getLogger(__name__)

FEATURE_HEADERS = headers(ARROW, "feature-batch.v1")
OFFSET_MARK = "source-offset"
FEATURIZE_TAKE = 64  # batch messages featurize takes at once, at most
FEATURIZE_ROWS = 8192  # rows it computes in one call, at most (a take may hold several)
SEND_ATTEMPTS = 8  # about two minutes of backing off before infer gives up


def wire_agents(app: App, settings: Settings, outbox: Outbox, serving: Serving
                ) -> list[Gaps]:
    """Declare the topics, the state tables and the agents on `app`; infer scores with
    the models of `serving`. Returns the agents' gap repair, for the app to stop."""
    n = settings.partitions
    batches = app.topic(settings.topic("sensor-batches"), value_type=bytes,
                        value_serializer="raw", key_serializer="raw", partitions=n)
    features = app.topic(settings.topic("features"), value_type=bytes,
                         value_serializer="raw", key_serializer="raw", partitions=n)
    state = app.Table("sensor-state", default=None, partitions=n, key_type=str, value_type=str)

    async def repaired(topic: str, partition: int, start: int, stop: int) -> None:
        """Tell Faust that offsets start..stop-1 were handled (its own gap bookkeeping)."""
        await app.consumer._add_gap(  # type: ignore[attr-defined]  # Faust-internal
            TP(topic, partition), start, stop - 1)

    gaps = {name: Gaps(settings, settings.app_id, repaired)  # one side consumer per agent
            for name in ("featurize", "featurize-engagement", "infer")}
    # an agent's messages are processed one take at a time: by the agent, or by the
    # tail sweep below when Faust dropped messages it had read (streams.gaps)
    locks = {name: asyncio.Lock() for name in gaps}
    config = settings.sensor_features()
    features_topic = settings.topic("features")

    async def dead(agent: str, r: Rejected, msg: Any) -> asyncio.Future[object]:
        return await outbox.dead_letter(agent, r, topic=msg.topic, partition=msg.partition,
                                        offset=msg.offset, key=msg.key, raw=msg.value)

    async def open_batch(agent: str, checked: Rejected | tuple[pa.RecordBatch, list[Rejected]],
                         msg: Any) -> tuple[pa.RecordBatch, list[asyncio.Future[object]]] | None:
        """A checked batch message's good rows and its bad rows' dead letters (sent), or
        None when the whole message was dead-lettered."""
        if isinstance(checked, Rejected):
            await dead(agent, checked, msg)
            return None
        batch, rejected = checked
        return batch, [await dead(agent, r, msg) for r in rejected]

    @app.agent(batches, name="featurize")
    async def featurize(stream: StreamT[bytes]) -> AsyncIterable[None]:
        """Sensor batches to feature batches; per-sensor state in the `sensor-state` table.

        Takes the batch messages waiting (up to FEATURIZE_TAKE, within
        HEADWATER_FEATURIZE_MAX_WAIT_MS) and computes them together, so a sensor's cost
        and the two acknowledgements below are paid once per take, not once per message:
        at a few events per message (a steady trickle) that was most of the work.

        Crash-equal state: each sensor's state records the offset of the last batch
        message of its partition that the take held (`asof`), and is written only after
        the take's features and dead letters are acknowledged. A message replayed after
        a crash skips the rows of the sensors whose state already includes it (their
        features were delivered) and recomputes the others from exactly the state they
        had; features do not depend on how rows are cut into batches, so every event's
        features equal those of an uninterrupted run.
        """
        within = settings.featurize_max_wait_ms / 1000
        # take_events is faust-streaming's own addition, missing from the StreamT protocol
        async for events in stream.take_events(FEATURIZE_TAKE, within):  # type: ignore[attr-defined]
            async with locks["featurize"]:
                started = time.perf_counter()
                messages = [m for e in events for m in await gaps["featurize"].fill(e.message)]
                await featurize_messages(messages)
                STAGE_SECONDS.labels("featurize").observe(time.perf_counter() - started)
            yield None

    async def featurize_messages(messages: list[Any]) -> None:
        """A take of sensor batch messages (see featurize)."""
        pending: list[asyncio.Future[object]] = []
        opened: list[tuple[Any, pa.RecordBatch]] = []
        for msg in messages:
            got = await open_batch("featurize", sensor_batch(
                msg.value, msg.offset, msg.timestamp, now_ms()), msg)
            if got is not None:
                opened.append((msg, got[0]))
                pending += got[1]
        stored = {}
        for k in {k for _, b in opened for k in pc.unique(b.column("sensor_id")).to_pylist()}:
            if (v := state.get(k)) is None:
                continue
            if (loaded := load_state(v, config.state_format)) is None:
                # written by other feature code or settings: start this sensor afresh
                STATE_RESETS.labels("featurize").inc()
                log.warning("featurize: state of sensor %r is not %s; starting it afresh", k,
                            config.state_format)
                continue
            stored[k] = loaded
        kept: list[tuple[Any, pa.RecordBatch]] = []
        rows_of: dict[tuple[int, int], np.ndarray] = {}  # rows kept of a filtered message
        for msg, batch in opened:
            done = [k for k, st in stored.items() if st.get("asof", -1) >= msg.offset]
            if done:  # only this message's sensors match: they live in its partition
                skip = pc.is_in(batch.column("sensor_id"), value_set=pa.array(done))
                REPLAYED.labels("featurize").inc(pc.sum(skip).as_py())
                rows_of[msg.partition, msg.offset] = np.flatnonzero(
                    ~skip.to_numpy(zero_copy_only=False))
                batch = batch.filter(pc.invert(skip))
            if batch.num_rows:
                kept.append((msg, batch))
        if kept:
            await featurize_take(kept, stored, pending, rows_of)
        await asyncio.gather(*pending)

    async def featurize_take(kept: list[tuple[Any, pa.RecordBatch]], stored: dict[str, Any],
                             pending: list[asyncio.Future[object]],
                             rows_of: dict[tuple[int, int], np.ndarray]) -> None:
        """Features of the rows of a take and their dead letters, sent and acknowledged
        with the take's `pending` sends; then the sensors' states, written durably.

        The take is computed in groups of messages of up to FEATURIZE_ROWS rows, each
        group starting from the states the one before left."""
        states, changed = dict(stored), {}
        partition_of: dict[str, int] = {}
        group: list[tuple[Any, pa.RecordBatch]] = []
        for i, (msg, batch) in enumerate(kept):
            group.append((msg, batch))
            if i == len(kept) - 1 or sum(b.num_rows for _, b in group) \
                    + kept[i + 1][1].num_rows > FEATURIZE_ROWS:
                changed.update(await featurize_group(group, states, partition_of, pending,
                                                     rows_of))
                group = []
                await asyncio.gather(*pending)  # acknowledged per group: bounded in flight
                pending.clear()
        await asyncio.gather(*pending)  # delivered before the state moves past them
        last = {msg.partition: msg.offset for msg, _ in kept}  # offset order per partition
        await asyncio.gather(*(write_durably(state, {
            k: dump_state(st, asof=last[p], format=config.state_format).decode()
            for k, st in changed.items() if partition_of[k] == p}, p, outbox) for p in last))

    async def featurize_group(group: list[tuple[Any, pa.RecordBatch]], states: dict[str, Any],
                              partition_of: dict[str, int],
                              pending: list[asyncio.Future[object]],
                              rows_of: dict[tuple[int, int], np.ndarray]) -> dict[str, Any]:
        """One group's features and dead letters sent (onto `pending`); `states` moved
        past the group; returns the states it changed."""
        batch = pa.concat_tables([pa.Table.from_batches([b]) for _, b in group],
                                 promote_options="permissive").combine_chunks().to_batches()[0]
        sizes = [b.num_rows for _, b in group]
        origin = np.repeat(np.arange(len(group)), sizes)
        starts = np.cumsum([0, *sizes])
        mine = {k: msg.partition for msg, b in group  # per message, not per row
                for k in pc.unique(b.column("sensor_id")).to_pylist()}
        partition_of.update(mine)
        try:
            out, after, skipped = sensor_features(
                batch, {k: v for k, v in states.items() if k in mine}, config)
        except Exception as exc:  # a bug must not lose the group: Faust would ack it
            log.exception("featurize: %d batch messages failed", len(group))
            pending += [await dead("featurize", Rejected("featurize-error", repr(exc)[:300]),
                                   msg) for msg, _ in group]
            return {}
        states.update(after)
        rows = batch.select([c for c in batch.schema.names if c not in SENSOR_META])
        for sk in skipped:
            if sk.reason == "duplicate":
                DUPLICATES.labels("featurize").inc()
                continue
            j = int(origin[sk.row])
            msg, row = group[j][0], sk.row - int(starts[j])  # the row of its own message
            if (kept_rows := rows_of.get((msg.partition, msg.offset))) is not None:
                row = int(kept_rows[row])
            pending.append(await outbox.dead_letter(
                "featurize", Rejected(sk.reason, sk.detail, row), topic=msg.topic,
                partition=msg.partition, offset=msg.offset,
                key=batch.column("sensor_id")[sk.row].as_py().encode(),
                raw=orjson.dumps(rows.slice(sk.row, 1).to_pylist()[0])))
        for p, part in by_partition(out, mine):
            pending += await outbox.send_table(features_topic, part, partition=p,
                                               headers=FEATURE_HEADERS)
        EVENTS.labels("featurize").inc(out.num_rows)
        BATCH_ROWS.labels("featurize").observe(out.num_rows)
        return after

    engagement_batches = app.topic(settings.topic("engagement-batches"), value_type=bytes,
                                   value_serializer="raw", key_serializer="raw", partitions=n)
    engagement_state = app.Table("engagement-state", default=None, partitions=n,
                                 key_type=str, value_type=str)
    engagement_config = settings.engagement_features()
    engagement_format = engagement_config.state_format
    max_future_ms = config.max_future_ms

    @app.agent(engagement_batches, name="featurize-engagement")
    async def featurize_engagement(stream: StreamT[bytes]) -> AsyncIterable[None]:
        """Engagement batches to feature batches; user, item and user x category state in
        the `engagement-state` table, partitioned like the input (by user).

        An event reads three states, so a batch is replayed all or nothing: each state
        keeps `prev` (before the batch that last changed it) beside `cur`, and `asof`,
        that batch's offset. The changelog partition of a batch is its input partition,
        written in order, so after a crash every batch before the last one written is
        whole: a replayed batch is done when any of its states is past it or all are at
        it, and is recomputed from `prev` where its writes were cut short.
        """
        async for event in stream.events():
            async with locks["featurize-engagement"]:
                for msg in await gaps["featurize-engagement"].fill(event.message):
                    await featurize_engagement_message(msg)
            yield None

    async def featurize_engagement_messages(messages: list[Any]) -> None:
        for msg in messages:
            await featurize_engagement_message(msg)

    async def featurize_engagement_message(msg: Any) -> None:
        """One engagement batch message (see featurize_engagement)."""
        started = time.perf_counter()
        opened = await open_batch("featurize-engagement", engagement_batch(
            msg.value, msg.offset, msg.timestamp, now_ms()), msg)
        if opened is None:
            return
        batch, pending = opened
        ahead = pc.subtract(batch.column("event_time"), batch.column("ingest_time"))
        future = pc.fill_null(pc.greater(ahead, max_future_ms), False)
        for row in pc.indices_nonzero(future).to_pylist():
            pending.append(await outbox.dead_letter(
                "featurize-engagement", Rejected(
                    "future", f"event time is {ahead[row].as_py()} ms after ingest, "
                    f"allowed {max_future_ms}", row),
                topic=msg.topic, partition=msg.partition, offset=msg.offset,
                key=batch.column("user_id")[row].as_py().encode(),
                raw=orjson.dumps(batch.slice(row, 1).to_pylist()[0])))
        batch = batch.filter(pc.invert(future))
        mark = OFFSET_MARK  # the last source offset applied
        keys = [*engagement_state_keys(batch), mark]
        # items meet in every partition: state per partition; keys kept printable
        # (the user x category separator is a control character)
        scope = f"{msg.partition}/"
        names = {k: scope + k.encode("unicode_escape").decode() for k in keys}
        stored = {}
        for k in keys:
            if (v := engagement_state.get(names[k])) is None:
                continue
            if (d := orjson.loads(v)).get("format") != engagement_format:
                STATE_RESETS.labels("featurize-engagement").inc()  # other code wrote it
                continue
            stored[k] = d
        before = resume(stored, len(keys), msg.offset)
        if before is None:
            REPLAYED.labels("featurize-engagement").inc(batch.num_rows)
            log.info("featurize-engagement: batch at %s:%d:%d was applied before a "
                     "restart; skipped", msg.topic, msg.partition, msg.offset)
            return
        applied = before.pop(mark, None)
        if applied is not None:  # events ingest sent again after a crash
            again = pc.less_equal(batch.column("source_offset"), applied)
            if (n_again := pc.sum(again).as_py() or 0):
                DUPLICATES.labels("featurize-engagement").inc(n_again)
                log.info("featurize-engagement: %d events of the batch at %s:%d were "
                         "applied before a restart; skipped", n_again, msg.topic, msg.offset)
            batch = batch.filter(pc.invert(again))
        try:
            out, after = engagement_features(batch, before, engagement_config)
        except Exception as exc:  # a bug must not lose the batch: Faust would ack it
            log.exception("featurize-engagement: batch at %s:%d failed", msg.topic,
                          msg.offset)
            await dead("featurize-engagement",
                       Rejected("featurize-error", repr(exc)[:300]), msg)
            return
        if out.num_rows:
            pending += await outbox.send_table(features_topic, out, partition=msg.partition,
                                               headers=FEATURE_HEADERS)
        await asyncio.gather(*pending)  # delivered before the state moves past them
        if batch.num_rows:
            after[mark] = pc.max(batch.column("source_offset")).as_py()
            before[mark] = applied
        await write_durably(engagement_state, {
            names[k]: orjson.dumps({"asof": msg.offset, "prev": before.get(k), "cur": cur,
                                    "format": engagement_format}).decode()
            for k, cur in after.items()}, msg.partition, outbox)
        EVENTS.labels("featurize-engagement").inc(out.num_rows)
        BATCH_ROWS.labels("featurize-engagement").observe(out.num_rows)
        STAGE_SECONDS.labels("featurize-engagement").observe(time.perf_counter() - started)

    @app.agent(features, name="infer")
    async def infer(stream: StreamT[bytes]) -> AsyncIterable[None]:
        """Feature batches to predictions, each scored by the served model of its feature
        set; a promotion swaps that model between two micro-batches (streams.serving)."""
        serving.start()  # the served models load now: a missing or broken one fails loudly
        max_msgs = max(1, settings.infer_max_rows // 256)
        within = settings.infer_max_wait_ms / 1000
        # take_events is faust-streaming's own addition, missing from the StreamT protocol
        async for events in stream.take_events(max_msgs, within):  # type: ignore[attr-defined]
            async with locks["infer"]:
                await infer_messages(
                    [m for e in events for m in await gaps["infer"].fill(e.message)])
            yield None

    async def infer_messages(messages: list[Any]) -> None:
        """A take of feature batch messages (see infer)."""
        routed = route([m.value for m in messages], [m.partition for m in messages], serving,
                       [m.offset for m in messages])
        for i, rejected in routed.rejected:
            await dead("infer", rejected, messages[i])
        for attempt in range(SEND_ATTEMPTS):  # a broker away: Faust would ack and lose
            try:
                pending: list[asyncio.Future[object]] = []
                for fam, (served, tables) in routed.groups.items():
                    head = serving.head(fam)  # taken once: a swap lands between batches
                    for t in chunks(tables, settings.infer_max_rows):
                        pending += await infer_batch(t, served, outbox, settings, head)
                await asyncio.gather(*pending)
                break
            except KafkaError as exc:
                if attempt == SEND_ATTEMPTS - 1:
                    raise
                log.warning("infer: sending predictions failed (%r); sending again", exc)
                await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt))  # back off

    processors = {"featurize": (batches.get_topic_name(), featurize_messages),
                  "featurize-engagement": (engagement_batches.get_topic_name(),
                                           featurize_engagement_messages),
                  "infer": (features_topic, infer_messages)}
    ready_since: list[float] = []  # when the worker last finished a rebalance and recovery

    # faust's App.timer returns a bare Callable, which mypy --strict calls untyped
    @app.timer(interval=settings.tail_idle_s / 2)  # type: ignore[untyped-decorator]
    async def sweep_tails() -> None:
        """Process, then commit, messages Faust read at a partition's tail but dropped
        (streams.gaps): with no later message, nothing else would ever reveal them."""
        consumer: Any = app.consumer
        if app.rebalancing or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            ready_since.clear()
            return
        if not ready_since:
            ready_since.append(time.monotonic())
        for name, (topic, process) in processors.items():
            async with locks[name]:
                read = {(tp.topic, tp.partition): consumer._read_offset.get(tp)  # Faust-internal
                        for tp in consumer.assignment() if tp.topic == topic}
                missed = await gaps[name].tail(read, settings.tail_idle_s, ready_since[0])
                if not missed:
                    continue
                await process(missed)
                done: dict[TP, int] = {}
                for m in missed:
                    done[TP(m.topic, m.partition)] = m.offset + 1
                # what Faust would commit had it delivered and acknowledged them
                await consumer._commit_offsets(done)  # Faust-internal

    _ = (featurize, featurize_engagement, infer, sweep_tails)
    return list(gaps.values())


async def write_durably(table: Any, values: dict[str, str], partition: int,
                        outbox: Outbox) -> None:
    """Set table keys and wait until their changelog records are acknowledged.

    `table[k] = v` hands each changelog record to Faust's producer buffer, and Faust
    may commit the input offset before that record reaches the broker (a kill -9 then
    lost a batch's state while its input counted as done). Here the store is set
    directly and the records go out in a few record batches to the changelog partition
    of the input, encoded as Faust encodes a str table (JSON), and are awaited before
    the agent takes its next message.
    """
    for k, v in values.items():
        table.data[k] = v
    records = [(orjson.dumps(k), orjson.dumps(v)) for k, v in values.items()]
    await asyncio.gather(*await outbox.send_to_partition(
        table.changelog_topic.get_topic_name(), partition, records))


def by_partition(out: pa.RecordBatch, partition_of: dict[str, int]
                 ) -> list[tuple[int, pa.RecordBatch]]:
    """The rows of `out` by the partition of their `entity_id`, for every partition in
    `partition_of` (ascending; a partition whose rows were all rejected gets none), rows
    in order within each: one take of the wide feature batch, then zero-copy slices (a
    filter per partition copied every column once per partition).

    >>> b = pa.record_batch({"entity_id": ["s1", "s2", "s1", "s3"], "f": [1.0, 2.0, 3.0, 4.0]})
    >>> [(p, part.column("f").to_pylist()) for p, part in by_partition(b, {"s1": 2, "s2": 0,
    ...                                                                   "s3": 0, "s4": 1})]
    [(0, [2.0, 4.0]), (1, []), (2, [1.0, 3.0])]
    """
    encoded = pc.dictionary_encode(out.column("entity_id"))
    lookup = np.array([partition_of[k] for k in encoded.dictionary.to_pylist()], np.int64)
    partition = lookup[encoded.indices.to_numpy(zero_copy_only=False)] if len(lookup) \
        else np.empty(0, np.int64)
    order = np.argsort(partition, kind="stable")
    ordered = out if bool((order == np.arange(len(order))).all()) else out.take(order)
    parts = sorted(set(partition_of.values()))
    bounds = np.searchsorted(partition[order], parts + [parts[-1] + 1] if parts else [])
    return [(p, ordered.slice(int(lo), int(hi - lo)))
            for p, lo, hi in zip(parts, bounds, bounds[1:], strict=False)]


def resume(stored: dict[str, Any], keys: int, offset: int) -> dict[str, Any] | None:
    """The states a batch at `offset` starts from, or None when it was applied already.

    `stored` holds the `keys` states the batch reads that exist, each `{"asof", "prev",
    "cur"}`. The batch was applied when any state is past it (later batches of the
    partition were written, and its writes came first) or all are at it. Otherwise it
    starts from `prev` where its own writes got through before a crash, else `cur`;
    entities new then are left out.

    >>> resume({"a": {"asof": 7, "prev": None, "cur": [1.0]}}, 1, 7) is None
    True
    >>> resume({"a": {"asof": 7, "prev": [0.5], "cur": [1.0]},
    ...         "b": {"asof": 3, "prev": None, "cur": [2.0]}}, 3, 7)
    {'a': [0.5], 'b': [2.0]}
    >>> resume({"a": {"asof": 7, "prev": None, "cur": [1.0]}}, 2, 7)
    {}
    """
    at = [d["asof"] for d in stored.values()]
    if at and (max(at) > offset or (len(at) == keys and min(at) == offset)):
        return None
    before = {k: d["prev"] if d["asof"] == offset else d["cur"] for k, d in stored.items()}
    return {k: v for k, v in before.items() if v is not None}
