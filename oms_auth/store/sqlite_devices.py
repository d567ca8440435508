"""The SQLite store's writes for sessions and devices a user sees (docs/protocol.md, "Sessions
and devices"): a mixin of :class:`~.sqlite.SqliteStore`, each write one job of its single
writer."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec

from . import sqlite_tx as tx
from .audit import ChainKeys
from .device_sql import SQLITE_DEVICES as D
from .device_sql import DeviceCodeIssue, code_args
from .records import AuditEntry, Authority
from .sql import mail_args
from .sqlite_tx import S

__all__ = ["SqliteDevices"]

T = TypeVar("T")


class SqliteDevices:
    """Mixed into the SQLite store (which gives ``_write`` and ``_audit_key``)."""

    _audit_key: ChainKeys

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

    async def issue_device_code(self, issue: DeviceCodeIssue) -> None:
        def job(raw: sqlite3.Connection) -> None:
            raw.execute(D.issue_code, code_args(issue))
            raw.execute(S.insert_mail, mail_args(issue.mail, issue.now))
            tx.append_audit(raw, self._audit_key, [issue.audit], issue.now)

        await self._write(job)

    async def register_device(
        self, hash_code: int, digest: bytes, now: float, tries: int, until: float, audit: AuditEntry
    ) -> int | None:
        def job(raw: sqlite3.Connection) -> int | None:
            # In the single writer: racing tries run one after another, and the first right
            # one spends the code before the next looks.
            row = raw.execute(D.trust, (until, hash_code, digest, now, tries)).fetchone()
            if row is None:  # a wrong try (or none left): counted
                raw.execute(D.code_try, (hash_code, now, tries)).fetchall()
                return None
            user_id = int(row[0])
            entry = msgspec.structs.replace(audit, actor_id=user_id, target_id=user_id)
            tx.append_audit(raw, self._audit_key, [entry], now)
            return user_id

        return await self._write(job)
