"""The SQLite store's writes for sessions and devices a user sees (docs/protocol.md, "Sessions
and devices"): a mixin of :class:`~.sqlite.SqliteStore`, each write one job of its single
writer."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from . import sqlite_tx as tx
from .device_sql import SQLITE_DEVICES as D
from .records import AuditEntry, Authority

__all__ = ["SqliteDevices"]

T = TypeVar("T")


class SqliteDevices:
    """Mixed into the SQLite store (which gives ``_write`` and ``_audit_key``)."""

    _audit_key: bytes

    if TYPE_CHECKING:

        async def _write(self, job: Callable[[sqlite3.Connection], T]) -> T: ...

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
        def job(raw: sqlite3.Connection) -> list[bytes]:
            tx.authorize(raw, authority)
            if only is not None:
                rows = raw.execute(D.end_session, (user_id, only)).fetchall()
            else:
                rows = raw.execute(D.end_other_sessions, (user_id, keep or b"")).fetchall()
            ended = [bytes(row[0]) for row in rows]
            if ended:
                tx.append_audit(raw, self._audit_key, [audit], tx.clock(raw))
            return ended

        return await self._write(job)
