"""The SQLite store's single writer: one thread of its own, one standard-library connection,
group commit.

Every write is a job: a plain function given the writer's :class:`sqlite3.Connection`. The
writer task takes every job queued at that moment and sends them to its thread in one trip,
where they run in one transaction, each inside its own SAVEPOINT (a job that raises leaves no
trace and the others of its batch stand), then one COMMIT: under load many requests share one
fsync, and every caller still returns only after its own effect is committed (docs/rules.md,
concurrency invariants). Since no other connection writes, a job's reads and writes
(count-then-insert of a limit, redeeming a code, reading the audit chain's tail and appending)
run with nothing in between.

A job asked for ``alone`` runs in a transaction of its own, never grouped with another: an
import's batch is one transaction (docs/import.md), and an import queues its next batch while
the one before is still running, so the thread goes from one to the next without waiting for
the event loop to hand it over.

The thread is a one-worker executor of the standard library: aiosqlite offers no public way to
run a whole function in its connection's thread, and one trip per batch (not per statement) is
what keeps the writer fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..tasks import cancel
from .records import StoreError

__all__ = ["Job", "Writer"]

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
_Outcome = tuple[Any, BaseException | None]
_Queued = tuple[Job, "asyncio.Future[Any]", bool]  # the job, its caller's answer, alone


def run_batch(raw: sqlite3.Connection, jobs: list[Job]) -> tuple[bool, list[_Outcome]]:
    """In the writer's thread: ``jobs`` in one transaction, each in a savepoint of its own;
    whether it committed, and each job's result or error. When the transaction itself fails
    (BEGIN or COMMIT), every job gets that error."""
    out: list[_Outcome] = []
    try:
        raw.execute("BEGIN IMMEDIATE")
        for job in jobs:
            raw.execute("SAVEPOINT job")
            try:
                result = job(raw)
            except Exception as exc:
                raw.execute("ROLLBACK TO job")
                raw.execute("RELEASE job")
                out.append((None, exc))
            else:
                raw.execute("RELEASE job")
                out.append((result, None))
        raw.execute("COMMIT")
    except Exception as exc:
        with contextlib.suppress(sqlite3.Error):
            raw.execute("ROLLBACK")
        return False, [(None, exc) for _ in jobs]
    return True, out


class Writer:
    """The one connection that writes, in a thread of its own."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], max_batch: int = 256) -> None:
        self._connect = connect
        self._max_batch = max_batch
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._conn: sqlite3.Connection | None = None
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self._held: _Queued | None = None  # a job asked for alone, taken while grouping others
        self._task: asyncio.Task[None] | None = None
        self._trips = 0  # batches handed to the thread and not yet answered
        self.batches = 0  # how many commits it made: several jobs share one
        self._closing = False

    async def start(self) -> None:
        """Open the connection in the writer's thread and start taking jobs."""
        self._conn = await self._in_thread(self._connect)
        self._task = asyncio.create_task(self._loop(), name="sqlite-writer")

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def write(self, job: Callable[[sqlite3.Connection], T], *, alone: bool = False) -> T:
        """Run ``job`` in the next batch (in one of its own when ``alone``); return once its
        effect is committed."""
        if self._task is None or self._closing:
            raise StoreError("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future, alone))
        # shield: a caller that is cancelled must not leave the batch without its answer.
        return await asyncio.shield(future)

    async def _next(self) -> list[_Queued]:
        """The jobs of the next transaction: every one queued now (up to ``max_batch``), or
        one asked for alone."""
        held, self._held = self._held, None
        batch = [held if held is not None else await self._queue.get()]
        while not batch[0][2] and not self._queue.empty() and len(batch) < self._max_batch:
            queued = self._queue.get_nowait()
            if queued[2]:
                self._held = queued
                break
            batch.append(queued)
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._next()
            assert self._conn is not None
            # The thread's own queue keeps the order: a job alone is handed over at once, and
            # the thread takes it when the one before commits, without waiting for this loop
            # to hand it over then. Others wait for their commit here, so what is queued
            # meanwhile shares the next one.
            trip = asyncio.get_running_loop().run_in_executor(
                self._thread, run_batch, self._conn, [job for job, _, _ in batch]
            )
            self._trips += 1
            trip.add_done_callback(functools.partial(self._answer, batch))
            if not batch[0][2]:
                await asyncio.wait([trip])

    def _answer(
        self, batch: list[_Queued], trip: asyncio.Future[tuple[bool, list[_Outcome]]]
    ) -> None:
        self._trips -= 1
        try:
            committed, outcomes = trip.result()
        except BaseException as exc:  # the thread itself failed: every caller hears it
            committed, outcomes = False, [(None, exc) for _ in batch]
        self.batches += committed
        for (_, future, _), (result, error) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    async def close(self) -> None:
        """Finish what is queued (a caller awaits it), then close the connection. A write
        asked for once closing began is refused (it would wait for a loop that is ending)."""
        self._closing = True
        if self._task is not None:
            while not self._queue.empty() or self._trips or self._held is not None:
                await asyncio.sleep(0.01)
            await cancel(self._task)
            self._task = None
        if self._conn is not None:
            await self._in_thread(self._conn.close)
            self._conn = None
        self._thread.shutdown(wait=True)
