"""The curate stage keeps going through a rebalance: what it handled of a partition it no
longer holds is neither committed nor asked about (aiokafka asserts), and a commit the
group refuses mid-rebalance is logged, not raised (a raise stopped the worker in CI)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from streams.curate import Curate
from streams.settings import Settings

HELD, GONE = TopicPartition("p", 0), TopicPartition("p", 1)


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Consumer:
    """The aiokafka consumer calls curate makes when it commits, with their checks."""

    def __init__(self, refuse: bool) -> None:
        self.refuse, self.committed, self.asked = refuse, [], []

    def assignment(self) -> set[TopicPartition]:
        return {HELD}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refuse:
            raise CommitFailedError("rebalance in progress")
        self.committed.append(offsets)

    def highwater(self, tp: TopicPartition) -> int:
        assert tp in self.assignment(), "Partition is not assigned"
        self.asked.append(tp)
        return 100


@pytest.mark.parametrize("refuse", [False, True])
def test_a_commit_after_a_rebalance_keeps_to_the_partitions_held(refuse: bool) -> None:
    curate = Curate(Settings(), outbox=None)  # type: ignore[arg-type]  # not used here
    fake: Any = Consumer(refuse)
    curate.consumer = fake
    asyncio.run(curate._commit({HELD: [Record(4), Record(9)], GONE: [Record(7)]}))
    assert fake.committed == ([] if refuse else [{HELD: 10}])
    assert fake.asked == ([] if refuse else [HELD])
