"""Bounded background work: a queue with a cap and a per-key share, served by a few tasks.

Work a request leaves behind (a self-service reset) must cost a bounded amount of memory and store
time however many requests arrive (docs/rules.md, "Work a request leaves behind"): past ``cap`` an
item is refused; one key (a source address) holds at most ``share`` of the queue, so one client's
flood cannot crowd out everyone else's. Workers start on demand and end when the queue is empty, so
none idles or leaks; ``drain()`` waits until every accepted item is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Generic, TypeVar

__all__ = ["Bounded", "Refused"]

T = TypeVar("T")
log = logging.getLogger("oms_auth.engine")


class Refused(Enum):
    """Why ``offer`` did not take an item."""

    SHARE = "share"  # its key already holds its share of the queue
    FULL = "full"  # the queue is at its cap


class Bounded(Generic[T]):
    """Items run through ``work`` in the background, at most ``cap`` waiting at once."""

    def __init__(
        self,
        work: Callable[[T], Awaitable[None]],
        *,
        cap: int,
        share: int,
        workers: int,
        name: str = "background-work",
    ) -> None:
        self._work = work
        self._name = name  # the workers' task name, for whoever looks at what runs
        self._queue: asyncio.Queue[tuple[str, T]] = asyncio.Queue(maxsize=max(1, cap))
        self._share = max(1, share)
        self._queued: Counter[str] = Counter()
        self._max_workers = max(1, workers)
        self._workers: set[asyncio.Task[None]] = set()

    def offer(self, key: str, item: T) -> Refused | None:
        """Queue ``item`` under ``key``; None when taken, else why not. Never waits."""
        if self._queued[key] >= self._share:
            return Refused.SHARE
        try:
            self._queue.put_nowait((key, item))
        except asyncio.QueueFull:
            return Refused.FULL
        self._queued[key] += 1
        if len(self._workers) < self._max_workers:
            self._workers.add(asyncio.create_task(self._serve(), name=self._name))
        return None

    async def drain(self) -> None:
        """Wait until every queued item is done and its worker has ended."""
        while self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)

    async def _serve(self) -> None:
        # The empty check and leaving the worker set happen with no await between them, so
        # ``offer`` starts a new worker whenever the last one has stopped looking.
        try:
            while not self._queue.empty():
                key, item = self._queue.get_nowait()
                try:
                    await self._work(item)
                except Exception:
                    log.exception("background work failed")
                finally:
                    self._queue.task_done()
                    self._queued[key] -= 1
                    if not self._queued[key]:
                        del self._queued[key]
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._workers.discard(task)
