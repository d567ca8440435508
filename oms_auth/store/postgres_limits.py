"""The PostgreSQL store's counted events (docs/rules.md, "Logins" and "Fair limits"): a mixin
of :class:`~.postgres.PostgresStore`. Every counter is guarded by an advisory lock of its own
(kind and key), taken in one sorted order, so two transactions counting the same counters on
any nodes never wait on each other in a cycle, and a count read under the lock stays true until
the transaction that read it records its event."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import plans
from .postgres_tx import ADVISORY_LOCK, RELEASE_EVENT, SETTLE_EVENT, S, attempts, lock_key
from .records import Admission, Claim, Room, Slot

if TYPE_CHECKING:
    from .postgres_pool import Conn

__all__ = ["PostgresLimits"]


class PostgresLimits:
    """Mixed into the PostgreSQL store (which gives the attributes declared below)."""

    if TYPE_CHECKING:
        schema: str

        def _tx(self) -> contextlib.AbstractAsyncContextManager[Conn]: ...

    def _events_key(self, kind: str, key: str) -> int:
        """The advisory lock key of a counter (``key`` as a claim holds it)."""
        return lock_key(self.schema, "events", kind, S.event_key(key))

    async def _lock_events(self, conn: Conn, kind: str, key: str) -> None:
        await conn.execute(ADVISORY_LOCK, lock_key(self.schema, "events", kind, key))

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[int] | None:
        async with self._tx() as conn:
            await self._lock_claims(conn, claims)
            counts = [await self._count(conn, c, now) for c in claims]
            if not plans.room_left(claims, counts):
                return None
            await self._record(conn, claims, now)
            return counts

    async def _lock_claims(self, conn: Conn, claims: Sequence[Claim]) -> None:
        # In a fixed order, so two transactions taking the same counters (on any nodes) never
        # wait on each other in a cycle.
        for kind, key in sorted({(c.kind, S.event_key(c.key)) for c in claims}):
            await self._lock_events(conn, kind, key)

    @staticmethod
    async def _count(conn: Conn, claim: Claim, now: float) -> int:
        args = (claim.kind, S.event_key(claim.key), now - claim.window)
        return int(await conn.fetchval(S.count_events_since, *args))

    @staticmethod
    async def _record(conn: Conn, claims: Sequence[Claim], now: float) -> None:
        await conn.executemany(S.insert_event, [(c.kind, S.event_key(c.key), now) for c in claims])

    async def admit(self, claims: Sequence[Claim], now: float) -> Admission:
        async with self._tx() as conn:
            await self._lock_claims(conn, claims)  # as reserve's
            admission = plans.admission(claims, [await attempts(conn, c, now) for c in claims])
            if admission.room is Room.FREE:
                rows = [(c.kind, S.event_key(c.key), now) for c in claims]
                await conn.executemany(S.insert_attempt, rows)
            return admission

    async def settle(self, slots: Sequence[Slot]) -> None:
        # Under the counters' locks, in their order: settles of alike events (one time, one
        # key) racing unlocked would pick the same row, and all but one change nothing.
        async with self._tx() as conn:
            for kind, key, at in sorted((s.kind, S.event_key(s.key), s.at) for s in slots):
                await self._lock_events(conn, kind, key)
                await conn.execute(SETTLE_EVENT, kind, key, at)

    async def release(self, kind: str, key: str, at: float) -> None:
        async with self._tx() as conn:
            await self._release(conn, Slot(kind, key, at))

    async def _release(self, conn: Conn, slot: Slot) -> None:
        key = S.event_key(slot.key)
        await self._lock_events(conn, slot.kind, key)
        await conn.execute(RELEASE_EVENT, slot.kind, key, slot.at)
