"""Test doubles that live in the repo (STYLE.md §4)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from schemas.codec import Rejected, write_ipc_parts
from streams.outbox import TABLE_LIMIT


def _done() -> asyncio.Future[object]:
    fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


@dataclass
class RecordingOutbox:
    """Stands in for streams.outbox.Outbox: records what would have been sent."""

    sent: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)
    dead: list[tuple[str, Rejected, int, int]] = field(default_factory=list)

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None,
                   partition: int | None = None, headers: object = None
                   ) -> asyncio.Future[object]:
        self.sent.append((topic, value, key))
        return _done()

    async def send_keyed(self, topic: str, keys: Sequence[str], values: Sequence[bytes],
                         headers: object) -> list[asyncio.Future[object]]:
        self.sent += [(topic, v, k.encode()) for k, v in zip(keys, values, strict=True)]
        return [_done()]

    async def send_table(self, topic: str, table: pa.Table, *, partition: int | None = None,
                         headers: object = None, limit: int = TABLE_LIMIT
                         ) -> list[asyncio.Future[object]]:
        return [await self.send(topic, part, partition=partition)
                for part in write_ipc_parts(table, limit)]

    async def dead_letter(self, agent: str, rejected: Rejected, *, topic: str, partition: int,
                          offset: int, key: bytes | None, raw: bytes | None
                          ) -> asyncio.Future[object]:
        self.dead.append((agent, rejected, partition, offset))
        return _done()


@dataclass
class FakeRecord:
    """A consumed message as schemas.codec.Record reads it."""

    value: bytes | None
    headers: list[tuple[str, bytes]]
    offset: int
    timestamp: int | None = None
    key: bytes | None = None
