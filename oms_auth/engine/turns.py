"""Waiting for a login slot (docs/rules.md, "Fair limits").

A login limit counts failures and the attempts in flight. An attempt that finds every slot of a
limit held by attempts still being checked waits for one of them to end, in arrival order, for
at most ``login_wait_seconds``, instead of being refused; one that finds the limit full of
failures is refused at once. :func:`admit` does that around ``Store.admit`` (whose plan tells
the two apart).

Waiters line up per counter (its kind and key), on this node. Only the first of a line asks the
store again: when a slot of that counter is given back on this node (:meth:`Turns.wake`), when
the one before it leaves the line, and every ``POLL_SECONDS`` otherwise. The poll is how a slot
freed on another node is seen. LISTEN/NOTIFY was the other way: it would send a notice on every
login's end, on every node, waiters or not, for a wait that a poll ends at most ``POLL_SECONDS``
late; a slot is held for one password check (a fraction of a second), and the poll costs one
small transaction per waiting counter per interval, not per waiter. Measured on two nodes on
PostgreSQL (the two-node test of tests/test_fair_limits.py: 24 logins of one user waiting on
one node while the other held all 10 slots): all 24 succeeded, answered 0.52 to 0.59 s after the
other node began giving its slots back (its 20 release transactions, then 24 hashes and logins,
on a shared 2-core machine).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from ..store import Admission, Claim, Room, Store

__all__ = ["POLL_SECONDS", "Turns", "admit", "line_key"]

# How often the first waiter of a line asks the store again without being woken.
POLL_SECONDS = 0.1


def line_key(kind: str, key: str) -> str:
    """The line of waiters for one counter."""
    return f"{kind}\x00{key}"


class Turns:
    """The lines of attempts waiting for a slot, per counter, on this node (in arrival order)."""

    def __init__(self) -> None:
        self._lines: dict[str, deque[asyncio.Event]] = {}

    def waiting(self, key: str) -> bool:
        return bool(self._lines.get(key))

    def waiters(self, kind: str, key: str) -> int:
        """How many attempts wait for a slot of this counter on this node."""
        return len(self._lines.get(line_key(kind, key), ()))

    def wake(self, key: str) -> None:
        """A slot of this counter was given back: the first waiter tries again."""
        line = self._lines.get(key)
        if line:
            line[0].set()

    def first(self, key: str, me: asyncio.Event) -> bool:
        line = self._lines.get(key)
        return line is not None and bool(line) and line[0] is me

    @contextlib.contextmanager
    def place(self, key: str) -> Iterator[asyncio.Event]:
        """A place at the end of ``key``'s line; leaving it lets the next one try."""
        line = self._lines.setdefault(key, deque())
        me = asyncio.Event()
        line.append(me)
        try:
            yield me
        finally:
            line.remove(me)
            if line:
                line[0].set()
            else:
                del self._lines[key]


async def admit(
    store: Store,
    turns: Turns,
    claims: Sequence[Claim],
    clock: Callable[[], float],
    wait_seconds: float,
) -> tuple[Admission, float]:
    """A slot of every claim, waiting (in arrival order, up to ``wait_seconds``) while a limit is
    full of attempts in flight. The store's last answer, and the time its slots were taken at:
    FREE (slots taken), FAILURES (refused), or IN_FLIGHT when the wait ran out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    keys = [line_key(c.kind, c.key) for c in claims]
    # Behind those already waiting on this node: a newcomer does not jump the line.
    key = next((k for k in keys if turns.waiting(k)), None)
    if key is None:
        now = clock()
        admission = await store.admit(claims, now)
        if admission.room is not Room.IN_FLIGHT:
            return admission, now
        key = _full_key(admission)
    while True:
        found = await _wait_in_line(store, turns, key, claims, clock, deadline)
        if isinstance(found, str):  # full under another counter now: its line
            key = found
            continue
        return found


async def _wait_in_line(
    store: Store,
    turns: Turns,
    key: str,
    claims: Sequence[Claim],
    clock: Callable[[], float],
    deadline: float,
) -> tuple[Admission, float] | str:
    loop = asyncio.get_running_loop()
    with turns.place(key) as me:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return Admission(Room.IN_FLIGHT, ()), clock()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(POLL_SECONDS, left)):
                    await me.wait()
            if not turns.first(key, me):
                continue
            me.clear()
            now = clock()
            admission = await store.admit(claims, now)
            if admission.room is not Room.IN_FLIGHT:
                return admission, now
            full = _full_key(admission)
            if full != key:
                return full


def _full_key(admission: Admission) -> str:
    assert admission.full is not None  # (IN_FLIGHT names its counter)
    return line_key(admission.full.kind, admission.full.key)
