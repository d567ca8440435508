"""Mappers from a row, as either store's driver returns it, to a record (the ``to_*`` that
:mod:`.sql` names): one reading of each query's columns, whichever store ran it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Protocol

import msgspec

from .codes import CodeState
from .records import (
    ApiKey,
    AuditRow,
    MailState,
    OutboxRow,
    ResetCode,
    SecurityQuestion,
    Session,
    User,
)

__all__ = [
    "Row",
    "SEP",
    "to_user",
    "to_session",
    "to_question",
    "to_code",
    "mail_counts",
    "to_outbox",
    "to_audit",
    "to_api_key",
]


class Row(Protocol):
    """A result row as either driver returns it (a tuple, an ``asyncpg.Record``)."""

    def __getitem__(self, index: int, /) -> Any: ...


# Separates the items of a SQLite group_concat list (a user's permissions and accounts).
SEP: Final = "\x1f"


def _members(value: str | Iterable[Any] | None) -> Iterable[Any]:
    """A list column: a SEP-joined text or NULL (SQLite's group_concat), or a list
    (PostgreSQL's ARRAY)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return value.split(SEP) if value else ()
    return value


def to_user(row: Row) -> User:
    """A row of ``user_by_id``, ``user_by_name`` or ``users``."""
    return User(
        id=row[0],
        username=row[1],
        email=row[2],
        email_verified=bool(row[3]),
        oms_id=row[4],
        account_id=row[5],
        password_hash=row[6],
        totp_sealed=row[7],
        auth_source=row[8],
        active=bool(row[9]),
        master=bool(row[10]),
        last_login=row[11],
        locked_until=row[12],
        permissions=frozenset(_members(row[13])),
        accounts=frozenset(int(a) for a in _members(row[14])),
        password_version=row[15],
        totp_last_step=row[16],
        locale=row[17],
        created_at=row[18],
    )


def to_session(row: Row) -> Session:
    return Session(row[0], row[1], row[2], row[3])


def to_api_key(row: Row) -> ApiKey:
    """A row of ``api_key`` or ``user_api_keys``."""
    return ApiKey(
        key=row[0],
        user_id=row[1],
        permissions=tuple(msgspec.json.decode(row[2])),
        secret_sealed=bytes(row[3]),
        created_at=row[4],
    )


def to_question(row: Row) -> SecurityQuestion:
    return SecurityQuestion(row[0], row[1], row[2])


def to_code(row: Row) -> ResetCode:
    """A row of ``live_code``."""
    return ResetCode(row[0], row[1], row[2], CodeState(row[3]))


def mail_counts(rows: Iterable[Row]) -> dict[str, int]:
    """The outbox's messages by state (every state named, 0 when none), from ``mail_counts``."""
    counts = dict.fromkeys(MailState, 0)
    counts.update({MailState(row[0]): int(row[1]) for row in rows})
    return {str(state): n for state, n in counts.items()}


def to_outbox(row: Row) -> OutboxRow:
    """A row of :data:`OUTBOX_COLUMNS`, as the claim that counted the attempt returns it:
    ``attempts`` already includes the claim."""
    return OutboxRow(
        id=row[0],
        kind=row[1],
        recipient=row[2],
        user_id=row[3],
        public=msgspec.json.decode(row[4]),
        sealed=row[5],
        attempts=row[6],
        created_at=row[7],
    )


def to_audit(row: Row) -> AuditRow:
    """A row of :data:`AUDIT_COLUMNS`."""
    return AuditRow(
        id=row[0],
        at=row[1],
        action=row[2],
        actor_id=row[3],
        target_id=row[4],
        target_name=row[5],
        source=row[6],
        detail=row[7],
        prev_hash=row[8],
        hash=row[9],
        key_id=row[10],
    )
