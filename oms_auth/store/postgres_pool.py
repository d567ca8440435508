"""The PostgreSQL store's pool: asyncpg's, handed out first come, first served.

asyncpg keeps its idle connections in an ``asyncio.Queue``. When a connection comes back, the
queue wakes the task that has waited longest, but a task that asks in the meantime (before the
woken one runs) takes the connection, and the woken task goes to the back of the line again.
Under load that happens at every turn, and a reset asks for a connection twice: some requests
were passed over many times while others went straight through (docs/performance.md, "A fair
turn at the pool": one node's p99 was 3.1-3.4 times its median, and is 1.4-1.5 times with this).

Here a semaphore of the pool's size stands in front of it. ``asyncio.Semaphore`` queues its
waiters first come, first served, and a task that asks while others wait goes behind them; the
pool then always has an idle connection for whoever passed the semaphore. Every use of the pool
goes through it, so the count holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A pooled connection, as the store's code holds it.
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]

__all__ = ["FairPool"]


class FairPool:
    """``pool`` (of at most ``size`` connections), one turn each in the order asked."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], size: int) -> None:
        self.pool = pool
        self._turns = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        async with self._turns, self.pool.acquire() as conn:
            yield conn

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def execute(self, query: str, *args: object) -> str:
        async with self.acquire() as conn:
            return await conn.execute(query, *args)

    async def executemany(self, query: str, args: Iterable[Sequence[object]]) -> None:
        async with self.acquire() as conn:
            await conn.executemany(query, args)
