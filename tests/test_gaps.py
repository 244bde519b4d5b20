"""Offsets an agent never saw are noticed and read back, in order, before the next one."""

from __future__ import annotations

import asyncio
import time

from streams.gaps import STUCK_READ, Gaps, Record
from streams.settings import Settings


class FakeGaps(Gaps):
    """Gaps over an in-memory partition: `committed` and the log are given."""

    def __init__(self, committed: int | None, log: list[bytes]) -> None:
        super().__init__(Settings(), "g")
        self.commit, self.log, self.reads = committed, log, []

    async def _committed(self, topic: str, partition: int) -> int | None:
        return self.commit

    async def _end(self, topic: str, partition: int) -> int:
        return len(self.log)

    async def _read(self, topic: str, partition: int, start: int, stop: int) -> list[Record]:
        self.reads.append((start, stop))
        return [Record(topic, partition, o, 0.0, None, self.log[o]) for o in range(start, stop)]


def offsets(gaps: Gaps, seen: list[int]) -> list[int]:
    async def run() -> list[int]:
        out: list[int] = []
        for o in seen:
            out += [m.offset for m in await gaps.fill(Record("t", 0, o, 0.0, None, b""))]
        return out

    return asyncio.run(run())


def test_in_order_messages_pass_and_a_hole_is_read_back_first() -> None:
    g = FakeGaps(committed=3, log=[b"m%d" % i for i in range(12)])
    assert offsets(g, [3, 4, 7, 8, 11]) == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert g.reads == [(5, 7), (9, 11)]


def test_the_first_message_is_checked_against_the_committed_offset() -> None:
    g = FakeGaps(committed=2, log=[b""] * 6)
    assert offsets(g, [4, 5]) == [2, 3, 4, 5]
    assert offsets(FakeGaps(committed=None, log=[]), [4, 5]) == [4, 5]  # nothing committed


def test_a_seek_back_is_a_replay_not_a_gap() -> None:
    g = FakeGaps(committed=0, log=[b""] * 6)
    assert offsets(g, [0, 1, 2, 1, 2, 3]) == [0, 1, 2, 1, 2, 3]
    assert g.reads == []


def test_a_broker_error_never_crashes_the_agent() -> None:
    class Broken(FakeGaps):
        async def _read(self, topic: str, partition: int, start: int, stop: int
                        ) -> list[Record]:
            raise ConnectionError("broker away")

    g = Broken(committed=0, log=[])
    assert offsets(g, [0, 3]) == [0, 3]  # the message itself still goes on


def tail(gaps: Gaps, last: int | None, idle_s: float, since: float = 0.0,
         stuck_s: float = 3600) -> list[int]:
    return [m.offset for m in asyncio.run(gaps.tail({("t", 0): last}, idle_s, since,
                                                    stuck_s))]


def test_a_drop_at_the_tail_is_read_back_once_the_partition_is_idle() -> None:
    g = FakeGaps(committed=0, log=[b""] * 10)
    assert offsets(g, [0, 1, 2]) == [0, 1, 2]
    assert tail(g, last=6, idle_s=3600) == []  # the partition gave a message just now
    assert tail(g, last=6, idle_s=0) == [3, 4, 5, 6]  # Faust read 3..6, the agent saw none
    assert tail(g, last=6, idle_s=0) == []  # once
    assert offsets(g, [7]) == [7]  # and the next message follows on
    assert g.reads == [(3, 7)]


def test_the_tail_check_stays_within_the_log_and_what_faust_read() -> None:
    g = FakeGaps(committed=4, log=[b""] * 6)
    assert tail(g, last=None, idle_s=0) == []  # Faust read nothing yet
    assert tail(g, last=3, idle_s=0) == []  # behind the committed offset: nothing dropped
    assert tail(g, last=9, idle_s=0) == [4, 5]  # a read offset past the end (a seek) is cut
    assert tail(FakeGaps(committed=6, log=[b""] * 6), last=6, idle_s=0) == []  # at the end


def test_a_partition_faust_stopped_fetching_is_read_back_to_its_end() -> None:
    g = FakeGaps(committed=35, log=[b""] * 37)
    g.born -= 120  # nothing given to the agent for two minutes
    assert tail(g, last=None, idle_s=10, stuck_s=600) == []  # not stuck for long enough
    assert tail(g, last=None, idle_s=10, stuck_s=60) == [35, 36]  # never fetched
    assert tail(g, last=36, idle_s=10, stuck_s=60) == []  # once
    h = FakeGaps(committed=2, log=[b""] * 5)
    h.born -= 120
    assert tail(h, last=1, idle_s=10, stuck_s=60) == [2, 3, 4]  # fetched, then stopped
    assert tail(FakeGaps(committed=5, log=[b""] * 5), last=None, idle_s=0, stuck_s=0) == []
    big = FakeGaps(committed=0, log=[b""] * (STUCK_READ + 5))
    assert len(tail(big, last=None, idle_s=0, stuck_s=0)) == STUCK_READ  # bounded a sweep


def test_the_tail_check_waits_for_the_rebalance_to_settle() -> None:
    g = FakeGaps(committed=0, log=[b""] * 3)
    g.born -= 300  # a worker five minutes old, whose partitions were just reassigned
    assert tail(g, last=2, idle_s=60, since=time.monotonic()) == []  # recovered just now
    assert tail(g, last=2, idle_s=60, since=time.monotonic() - 120) == [0, 1, 2]
