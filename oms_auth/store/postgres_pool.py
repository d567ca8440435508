"""The PostgreSQL store's pool: connections handed out first come, first served, each handed
from the task that is done with it straight to the task that waited longest.

asyncpg keeps its idle connections in an ``asyncio.Queue``. When a connection comes back, the
queue wakes the task that has waited longest, but a task that asks in the meantime (before the
woken one runs) takes the connection, and the woken task goes to the back of the line again.
Under load that happens at every turn, and a reset asks for a connection twice: some requests
were passed over many times while others went straight through (docs/performance.md, "A fair
turn at the pool": one node's p99 was 3.1-3.4 times its median, and is 1.4-1.6 times with
this). Taking and giving back a connection of asyncpg's pool also costs a task and several
turns of the event loop each time.

So this pool keeps the connections it took from asyncpg's pool, up to ``size``, and hands a
connection that comes back to the first task still waiting (or keeps it idle). asyncpg's pool
still opens them (with the store's ``init``), and gets a connection back whenever its state is
not plainly clean: closed, left in a transaction, or the block left with anything but an
error the server answered (a cancelled query, a cut connection). Its own cleanup then runs
(waiting out a cancellation, rolling back, closing) and the turn goes to a waiting task, which
takes a fresh connection from asyncpg's pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A pooled connection, as the store's code holds it.
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]

__all__ = ["FairPool"]


def _usable(conn: Conn) -> bool:
    """Open and outside a transaction. asyncpg takes a connection back itself when it is lost
    (even one this pool holds idle); giving it back again then does nothing. A block must not
    swallow a timeout or cancellation of its own query (the store's never do): asyncpg would
    still be cancelling it, and only its own release waits that out."""
    try:
        return not conn.is_closed() and not conn.is_in_transaction()
    except asyncpg.InterfaceError:  # taken back: "connection has been released to the pool"
        return False


# What a waiting task is handed: a connection, or None (a turn to take one from asyncpg's pool).
_Turn: TypeAlias = "asyncio.Future[Conn | None]"


class FairPool:
    """At most ``size`` connections of asyncpg's ``pool``, one turn each in the order asked."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], size: int) -> None:
        self.pool = pool
        self._size = size
        self._idle: list[Conn] = []  # taken from asyncpg's pool, free here; the last in first
        self._waiting: collections.deque[_Turn] = collections.deque()
        self._taken = 0  # connections taken from asyncpg's pool: idle here or in use
        self._closing = False

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        conn = await self._take()
        try:
            yield conn
        except asyncpg.PostgresError:  # the server answered: the connection is ready again
            await self._back(conn)
            raise
        except BaseException:  # cancelled mid-query, cut, ...: asyncpg's cleanup decides
            await self._return(conn)
            raise
        await self._back(conn)

    async def _take(self) -> Conn:
        if self._closing:
            raise asyncpg.InterfaceError("the pool is closing")
        if not self._waiting:
            while self._idle:
                conn = self._idle.pop()
                if _usable(conn):
                    return conn
                await self._return(conn)  # cut while idle
            if self._taken < self._size:
                self._taken += 1
                return await self._fresh()
        if self._closing:  # closed while giving back a cut one: nobody serves the line now
            raise asyncpg.InterfaceError("the pool is closing")
        turn: _Turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            handed = await turn
        except asyncio.CancelledError:
            if not turn.done() or turn.cancelled():
                with contextlib.suppress(ValueError):  # no turn left in line for no one
                    self._waiting.remove(turn)
            elif turn.exception() is None:  # handed something as it was cancelled: pass it on
                handed = turn.result()
                if handed is None:
                    self._free_slot()
                else:  # to the next task, or back to asyncpg's pool if closing meanwhile
                    await self._back(handed)
            raise
        return handed if handed is not None else await self._fresh()

    async def _fresh(self) -> Conn:
        """A connection from asyncpg's pool (it opens one when it has none idle), for a slot
        already counted in ``_taken``."""
        try:
            return await self.pool.acquire()
        except BaseException:
            self._free_slot()
            raise

    async def _back(self, conn: Conn) -> None:
        """A connection its task is done with: to the next task, unless it needs asyncpg's
        cleanup."""
        if self._closing or not _usable(conn):
            await self._return(conn)
        else:
            self._pass(conn)

    async def _return(self, conn: Conn) -> None:
        """Give ``conn`` back to asyncpg's pool; its turn goes to the next waiting task at once
        (which waits in asyncpg's pool until the cleanup is done), or, with none waiting, to
        whoever asks next."""
        self._free_slot()
        await self.pool.release(conn)

    def _free_slot(self) -> None:
        self._taken -= 1
        if not self._closing:
            self._pass(None)

    def _pass(self, conn: Conn | None) -> None:
        """Hand ``conn`` (None: a turn to take a fresh one) to the task that waited longest;
        with none waiting, keep it idle."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # not cancelled meanwhile
                if conn is None:
                    self._taken += 1  # the slot is the waiting task's from now on
                turn.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    async def close(self) -> None:
        """Give every connection back and close asyncpg's pool (which waits for those still
        in use: each is given back as its block ends)."""
        self._closing = True
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_exception(asyncpg.InterfaceError("the pool is closing"))
        idle, self._idle = self._idle, []
        for conn in idle:
            # asyncpg terminates a connection it fails to reset, and raises: close the rest
            with contextlib.suppress(Exception):
                await self._return(conn)
        await self.pool.close()

    def terminate(self) -> None:
        self._closing = True
        self._idle.clear()
        self.pool.terminate()

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
