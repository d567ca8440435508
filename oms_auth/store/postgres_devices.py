"""The PostgreSQL store's writes for sessions and devices a user sees (docs/protocol.md,
"Sessions and devices"): a mixin of :class:`~.postgres.PostgresStore`. Each write takes the
user's row lock first (as a login, a reset and every account change do), so it is ordered
against them on every node; each ended session is told to the other nodes."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from .device_sql import POSTGRES_DEVICES as D
from .device_sql import DeviceCodeIssue, code_args
from .postgres_tx import S, lock_for
from .records import AuditEntry, Authority, Revocation
from .sql import mail_args

if TYPE_CHECKING:
    from .postgres_pool import Conn

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

    async def issue_device_code(self, issue: DeviceCodeIssue) -> None:
        async with self._tx() as conn:
            await lock_for(conn, issue.user_id, None)
            await conn.execute(D.issue_code, *code_args(issue))
            await conn.execute(S.insert_mail, *mail_args(issue.mail, issue.now))
            await self._insert_audit(conn, [issue.audit], issue.now)

    async def register_device(
        self, hash_code: int, digest: bytes, now: float, tries: int, until: float, audit: AuditEntry
    ) -> int | None:
        async with self._tx() as conn:
            # The try's UPDATE takes the device's row lock: racing tries (any node) count in
            # turn, and one that waited finds the code spent by the first right one.
            row = await conn.fetchrow(D.trust, until, hash_code, digest, now, tries)
            if row is None:  # a wrong try (or none left): counted
                await conn.fetch(D.code_try, hash_code, now, tries)
                return None
            user_id = int(row[0])
            entry = msgspec.structs.replace(audit, actor_id=user_id, target_id=user_id)
            await self._insert_audit(conn, [entry], now)
            return user_id
