"""Topics are created once, with the configured partitions; a second call changes nothing."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.settings import TOPICS, Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration


def test_ensure_topics_is_idempotent(settings: Settings) -> None:
    first = asyncio.run(ensure_topics(settings))
    assert sorted(first) == sorted(settings.topic(t) for t in TOPICS)
    assert asyncio.run(ensure_topics(settings)) == []

    async def describe() -> dict[str, tuple[int, str | None]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
        await admin.start()
        try:
            meta = await admin.describe_topics([settings.topic(t) for t in TOPICS])
            return {m["topic"]: (len(m["partitions"]), None) for m in meta}
        finally:
            await admin.close()

    parts = asyncio.run(describe())
    assert {n for n, _ in parts.values()} == {settings.partitions}


def test_too_few_partitions_is_an_error(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings, ("labels",)))
    more = settings.model_copy(update={"partitions": settings.partitions + 2})
    with pytest.raises(RuntimeError, match="fewer than HEADWATER_PARTITIONS"):
        asyncio.run(ensure_topics(more, ("labels",)))
