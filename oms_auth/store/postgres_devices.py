"""The PostgreSQL store's writes for sessions and devices a user sees (docs/protocol.md,
"Sessions and devices"): a mixin of :class:`~.postgres.PostgresStore`. Each write takes the
user's row lock first (as a login, a reset and every account change do), so it is ordered
against them on every node; each ended session is told to the other nodes."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .device_sql import POSTGRES_DEVICES as D
from .postgres_tx import lock_for
from .records import AuditEntry, Authority, Revocation

if TYPE_CHECKING:
    from .postgres_tx import Conn

__all__ = ["PostgresDevices"]


class PostgresDevices:
    """Mixed into the PostgreSQL store (which gives the methods declared below)."""

    if TYPE_CHECKING:

        def _tx(self) -> contextlib.AbstractAsyncContextManager[Conn]: ...

        async def _insert_audit(
            self, conn: Conn, entries: Sequence[AuditEntry], now: float
        ) -> None: ...

        async def _revoked(self, conn: Conn, revocation: Revocation, now: float) -> None: ...

        @staticmethod
        async def _now(conn: Conn) -> float: ...

    async def end_sessions(
        self,
        user_id: int,
        reason: str,
        audit: AuditEntry,
        *,
        only: bytes | None = None,
        keep: bytes | None = None,
        authority: Authority | None = None,
    ) -> list[bytes]:
        async with self._tx() as conn:
            await lock_for(conn, user_id, authority)
            if only is not None:
                rows = await conn.fetch(D.end_session, user_id, only)
            else:
                rows = await conn.fetch(D.end_other_sessions, user_id, keep or b"")
            ended = [bytes(row[0]) for row in rows]
            if not ended:
                return ended
            now = await self._now(conn)
            for digest in ended:
                await self._revoked(conn, Revocation(user_id, reason, digest), now)
            await self._insert_audit(conn, [audit], now)
            return ended
