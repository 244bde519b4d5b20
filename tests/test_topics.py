"""Topics are created once, with the configured partitions; a second call changes nothing."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.settings import SINGLE_PARTITION, TOPICS, Settings
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
    assert {t: n for t, (n, _) in parts.items()} == {
        settings.topic(t): 1 if t in SINGLE_PARTITION else settings.partitions for t in TOPICS}


def test_internal_topics_are_compacted_and_visible_on_return(settings: Settings) -> None:
    """A consumer group that joins before the broker's metadata shows a topic is assigned
    none of it (and Faust never asks again): ensure_topics returns only once they show."""
    changelog = f"{settings.app_id}-state-changelog"
    asyncio.run(ensure_topics(settings, ("features",), internal={changelog: 2}))

    async def described() -> dict[str, tuple[int, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
        await admin.start()
        try:
            meta = await admin.describe_topics([changelog, settings.topic("features")])
            configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC,
                                                                   changelog)])
            policy = {name: value for name, value, *_ in configs[0].resources[0][4]}
            return {m["topic"]: (len(m["partitions"]), m["error_code"]) for m in meta} | {
                "policy": (0, policy["cleanup.policy"])}
        finally:
            await admin.close()

    assert asyncio.run(described()) == {changelog: (2, 0), settings.topic("features"): (4, 0),
                                        "policy": (0, "compact")}


def test_too_few_partitions_is_an_error(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings, ("labels",)))
    more = settings.model_copy(update={"partitions": settings.partitions + 2})
    with pytest.raises(RuntimeError, match="fewer than 6 .HEADWATER_PARTITIONS=6"):
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
