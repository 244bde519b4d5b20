"""Create headwater's topics idempotently, with the configured partitions and retention."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.settings import TOPICS, Settings

__all__ = ["drop_topics", "ensure_topics"]

log = logging.getLogger(__name__)

COMPACTED = {"model-updates"}


async def ensure_topics(settings: Settings, names: tuple[str, ...] = TOPICS) -> list[str]:
    """Create the topics that are missing; return the full names of those created.

    Existing topics are left as they are, but one with fewer partitions than configured
    is an error: partition p of an input maps to partition p of the internal topics.
    """
    admin = AIOKafkaAdminClient(**settings.kafka_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = {settings.topic(n): n for n in names}
        missing = [
            NewTopic(full, settings.partitions, settings.replication,
                     topic_configs=({"cleanup.policy": "compact"} if short in COMPACTED
                                    else {"retention.ms": str(settings.retention_ms)}))
            for full, short in wanted.items() if full not in existing
        ]
        created: list[str] = []
        present = [t for t in wanted if t in existing]
        if missing:
            resp = await admin.create_topics(missing)
            for topic, code, *_ in resp.topic_errors:
                if code == TopicAlreadyExistsError.errno:  # created meanwhile, by someone else
                    present.append(topic)
                elif code != 0:
                    raise RuntimeError(f"cannot create topic {topic}: error code {code}")
                else:
                    created.append(topic)
        if present:
            meta = await admin.describe_topics(present)
            for t in meta:
                n = len(t["partitions"])
                if n < settings.partitions:
                    raise RuntimeError(f"topic {t['topic']} has {n} partitions, fewer than "
                                       f"HEADWATER_PARTITIONS={settings.partitions}")
        if created:
            log.info("created topics: %s", ", ".join(created))
        return created
    finally:
        await admin.close()


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
