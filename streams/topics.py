"""Create headwater's topics idempotently, with the configured partitions and retention."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import OffsetAndMetadata

from schemas.codec import header
from streams.settings import SINGLE_PARTITION, TOPICS, Settings

__all__ = ["MAX_MESSAGE_BYTES", "commit_unstarted", "drop_topics", "ensure_topics",
           "latest_by_key", "partitions_of"]

log = logging.getLogger(__name__)

COMPACTED = {"model-updates", "checkpoints"}
#: head snapshots and learner checkpoints can be megabytes (a forest, the kept features)
LARGE_MESSAGES = {"model-updates", "checkpoints"}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


async def ensure_topics(settings: Settings, names: tuple[str, ...] = TOPICS, *,
                        internal: dict[str, int] | None = None) -> list[str]:
    """Create the topics that are missing; return the full names of those created.

    `internal` adds compacted topics by full name and partition count (the worker's
    table changelogs, Faust's leader topic). Existing topics are left as they are, but
    one with fewer partitions than configured is an error: partition p of an input maps
    to partition p of the internal topics. Returns once the broker's metadata shows
    every topic with a leader for each partition: a consumer group that joins earlier is
    assigned nothing for the topics it cannot see yet, and Faust does not ask again.
    """
    admin = AIOKafkaAdminClient(**settings.kafka_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = {settings.topic(n): (1 if n in SINGLE_PARTITION else settings.partitions,
                                      n in COMPACTED) for n in names}
        wanted.update({full: (n, True) for full, n in (internal or {}).items()})
        large = {settings.topic(n) for n in LARGE_MESSAGES}
        missing = [
            NewTopic(full, n, settings.replication,
                     topic_configs=({"cleanup.policy": "compact"} if compact
                                    else {"retention.ms": str(settings.retention_ms)})
                     | ({"max.message.bytes": str(MAX_MESSAGE_BYTES)} if full in large else {}))
            for full, (n, compact) in wanted.items() if full not in existing
        ]
        created: list[str] = []
        if missing:
            resp = await admin.create_topics(missing)
            for topic, code, *_ in resp.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):  # or made meanwhile
                    raise RuntimeError(f"cannot create topic {topic}: error code {code}")
                if code == 0:
                    created.append(topic)
        seen = await _visible(admin, {t: n for t, (n, _) in wanted.items()})
        for topic, n in seen.items():
            want = wanted[topic][0]
            if n < want:
                raise RuntimeError(f"topic {topic} has {n} partitions, fewer than "
                                   f"{want} (HEADWATER_PARTITIONS={settings.partitions})")
        if created:
            log.info("created topics: %s", ", ".join(created))
        return created
    finally:
        await admin.close()


async def commit_unstarted(settings: Settings, group: str, names: tuple[str, ...]) -> int:
    """Commit the log-start offset for `group` on each partition of `names` that has no
    committed offset yet; return how many were committed.

    Faust drops records it has already fetched when a rebalance or its table recovery
    pauses the flow, and fetches them again by seeking to the committed offsets. A
    partition with no commit is not sought back, so those records were lost: a worker
    killed before its first commit and restarted on a full topic skipped the batches of
    its first fetch (found by the engagement crash test). With a commit on every
    partition, the seek always has somewhere to go. A group with live members refuses
    commits from outside; then their own commits stand, and this logs and moves on.
    """
    consumer = AIOKafkaConsumer(**settings.kafka_options(), group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic(n), p) for n in names
               for p in range(settings.partitions)]
        unset = [tp for tp in tps if await consumer.committed(tp) is None]
        if not unset:
            return 0
        start = await consumer.beginning_offsets(unset)
        consumer.assign(unset)
        try:
            await consumer.commit({tp: OffsetAndMetadata(start[tp], "") for tp in unset})
        except KafkaError as exc:
            log.warning("could not commit start offsets for %s (%r); its members' own "
                        "commits stand", group, exc)
            return 0
        return len(unset)
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str, timeout: float = 30.0
                        ) -> list[int]:
    """The partitions of `topic` as `consumer` sees them, once its metadata has them."""
    deadline = time.monotonic() + timeout
    while not (parts := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} not found: run `headwater topics create`")
        await consumer._client.force_metadata_update()  # noqa: SLF001
        await asyncio.sleep(0.2)
    return sorted(parts)


async def latest_by_key(settings: Settings, name: str, schema: bytes
                        ) -> dict[bytes, bytes | None]:
    """The last value of each key among the messages now in topic `name` (before the
    prefix) whose `schema` header is `schema`: what a compacted topic holds, read
    outside any consumer group."""
    reader = AIOKafkaConsumer(**settings.kafka_options(), group_id=None,
                              enable_auto_commit=False, auto_offset_reset="earliest",
                              max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                              fetch_max_bytes=MAX_MESSAGE_BYTES)
    await reader.start()
    try:
        topic = settings.topic(name)
        tps = [TopicPartition(topic, p) for p in await partitions_of(reader, topic)]
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        await reader.seek_to_beginning(*tps)
        latest: dict[bytes, bytes | None] = {}
        while [tp for tp in tps if await reader.position(tp) < ends[tp]]:
            for tp, records in (await reader.getmany(timeout_ms=500)).items():
                latest.update((r.key or b"", r.value) for r in records
                              if r.offset < ends[tp] and header(r.headers, "schema") == schema)
        return latest
    finally:
        await reader.stop()


async def _visible(admin: AIOKafkaAdminClient, topics: dict[str, int],
                   timeout: float = 60.0) -> dict[str, int]:
    """Wait until metadata shows each topic with a leader on every partition; return the
    partition counts. A busy broker can answer "unknown topic" for seconds after a create.
    """
    deadline = time.monotonic() + timeout
    while True:
        meta = await admin.describe_topics(list(topics))
        counts = {t["topic"]: len(t["partitions"]) for t in meta if t["error_code"] == 0
                  and all(p["leader"] >= 0 for p in t["partitions"])}
        waiting = [t for t in topics if counts.get(t, 0) == 0]
        if not waiting:
            return counts
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics not visible in the broker's metadata after "
                               f"{timeout:.0f}s: {', '.join(sorted(waiting))}")
        await asyncio.sleep(0.1)


async def drop_topics(settings: Settings) -> list[str]:
    """Delete this deployment's topics: those with the topic prefix (a prefix is needed)
    and the worker's own (`<app id>-...`: table changelogs, Faust's internals).

    For demos and benchmarks that start each run afresh; returns the names deleted.
    """
    if not settings.topic_prefix:
        raise RuntimeError("refusing to drop topics without HEADWATER_TOPIC_PREFIX")
    admin = AIOKafkaAdminClient(**settings.kafka_options())
    await admin.start()
    try:
        doomed = sorted(t for t in await admin.list_topics()
                        if t.startswith((settings.topic_prefix, f"{settings.app_id}-")))
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()
