"""Topics are created once, with the configured partitions; a second call changes nothing."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.settings import TOPICS, Settings
from streams.topics import drop_topics, ensure_topics
from tests.waiting import wait_for

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


def test_drop_topics_deletes_this_prefix_only(settings: Settings) -> None:
    other = settings.model_copy(update={"topic_prefix": "keep-" + settings.topic_prefix,
                                        "app_id": "keep-" + settings.app_id})
    asyncio.run(ensure_topics(settings, ("labels", "metrics")))
    asyncio.run(ensure_topics(other, ("labels",)))
    wanted = {settings.topic("labels"), settings.topic("metrics"), other.topic("labels")}
    wait_for(lambda: wanted <= set(asyncio.run(listed(settings))), 30,
             "the new topics in the broker's metadata")
    dropped = asyncio.run(drop_topics(settings))
    assert set(dropped) == {settings.topic(t) for t in ("labels", "metrics")}
    assert asyncio.run(drop_topics(other)) == [other.topic("labels")]  # it was left alone
    with pytest.raises(RuntimeError, match="without HEADWATER_TOPIC_PREFIX"):
        asyncio.run(drop_topics(settings.model_copy(update={"topic_prefix": ""})))


async def listed(s: Settings) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
    await admin.start()
    try:
        names: list[str] = await admin.list_topics()
        return names
    finally:
        await admin.close()
