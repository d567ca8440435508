"""The SQL of sessions a user sees and of devices (docs/protocol.md, "Sessions and devices"),
written once with ``?`` and converted for PostgreSQL, the steps a login adds to its session's
transaction, and the row mappers. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from .records import AuditEntry, DeviceSeen, MailItem, Outcome
from .sql import Row, Statements, mail_args, to_dollar

__all__ = [
    "DeviceStatements",
    "SQLITE_DEVICES",
    "POSTGRES_DEVICES",
    "device_sql",
    "seen_steps",
    "SessionEntry",
    "Device",
    "to_session_entry",
    "to_device",
    "DeviceCodeIssue",
    "code_args",
]

_DEVICE_COLUMNS = "user_id, hash_code, device_name, address, first_seen, last_seen, trusted_until"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceStatements:
    """Every statement of sessions lists and devices, by what it does."""

    user_sessions: str = (
        "SELECT digest, created_at, last_seen, api_key, device_name, address FROM sessions"
        " WHERE user_id = ? ORDER BY created_at, digest"
    )
    end_session: str = "DELETE FROM sessions WHERE user_id = ? AND digest = ? RETURNING digest"
    end_other_sessions: str = (
        "DELETE FROM sessions WHERE user_id = ? AND digest <> ? RETURNING digest"
    )
    describe_session: str = "UPDATE sessions SET device_name = ?, address = ? WHERE digest = ?"
    # A device's use: its name and address as this login gave them.
    device_used: str = (
        "UPDATE devices SET device_name = ?, address = ?, last_seen = ?"
        " WHERE user_id = ? AND hash_code = ?"
    )
    # The user's first device: recorded, but nothing to notice (no other device to compare).
    first_device: str = (
        f"INSERT INTO devices ({_DEVICE_COLUMNS})"
        " SELECT CAST(?1 AS BIGINT), CAST(?2 AS BIGINT), CAST(?3 AS TEXT), CAST(?4 AS TEXT),"
        " CAST(?5 AS DOUBLE PRECISION), CAST(?5 AS DOUBLE PRECISION), NULL"
        " WHERE NOT EXISTS (SELECT 1 FROM devices WHERE user_id = ?1)"
    )
    new_device: str = (
        f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)"
        " ON CONFLICT (user_id, hash_code) DO NOTHING"
    )
    user_devices: str = (
        f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = ?"
        " ORDER BY last_seen DESC, hash_code"
    )
    device: str = f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = ? AND hash_code = ?"
    # A code that would trust the device: the newest voids the one before, its tries anew.
    issue_code: str = (
        "INSERT INTO devices (user_id, hash_code, device_name, address, first_seen, last_seen,"
        " trusted_until, code_digest, code_expires, code_attempts)"
        " VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, 0)"
        " ON CONFLICT (user_id, hash_code) DO UPDATE SET device_name = excluded.device_name,"
        " address = excluded.address, code_digest = excluded.code_digest,"
        " code_expires = excluded.code_expires, code_attempts = 0"
    )
    # Whether a try could count at all: a HashCode with no live code is answered from this
    # read, so RegisterNewDevice (anonymous) writes nothing for made-up ones.
    live_code: str = (
        "SELECT 1 FROM devices WHERE hash_code = ? AND code_digest IS NOT NULL"
        " AND code_expires > ? AND code_attempts < ? LIMIT 1"
    )
    # A wrong try at a live code, counted (none left: no row).
    code_try: str = (
        "UPDATE devices SET code_attempts = code_attempts + 1"
        " WHERE hash_code = ? AND code_digest IS NOT NULL AND code_expires > ?"
        " AND code_attempts < ? RETURNING user_id"
    )
    # A right try: the code's own row must have a try left (another user's device may share
    # the HashCode, 31 bits, and tries counted on its row must buy this one nothing).
    trust: str = (
        "UPDATE devices SET trusted_until = ?, code_digest = NULL, code_expires = NULL,"
        " code_attempts = 0 WHERE hash_code = ? AND code_digest = ? AND code_expires > ?"
        " AND code_attempts < ? RETURNING user_id"
    )

    def converted(self) -> DeviceStatements:
        texts = {f.name: to_dollar(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **texts)


SQLITE_DEVICES: Final = DeviceStatements()
POSTGRES_DEVICES: Final = DeviceStatements().converted()


def device_sql(s: Statements) -> DeviceStatements:
    """The device statements of ``s``'s dialect."""
    return POSTGRES_DEVICES if s.is_postgres else SQLITE_DEVICES


def seen_steps(
    s: Statements, seen: DeviceSeen, user_id: int, digest: bytes, now: float
) -> list[tuple[str, tuple[object, ...], Outcome | None]]:
    """The steps a login adds to its session's transaction (``plans.session_plan``), last:
    the session described; with a HashCode the device's use recorded, and a device new to a
    user who had others before inserted with its notice queued (the insert that finds the
    device there answers DONE before the notice: one notice per device, whatever races)."""
    d = device_sql(s)
    steps: list[tuple[str, tuple[object, ...], Outcome | None]] = [
        (d.describe_session, (seen.name, seen.address, digest), None)
    ]
    if seen.hash_code is None:
        return steps
    code = seen.hash_code
    steps.append((d.device_used, (seen.name, seen.address, now, user_id, code), None))
    if seen.notice is not None:
        steps.append((d.first_device, (user_id, code, seen.name, seen.address, now), None))
    new = (user_id, code, seen.name, seen.address, now, now)
    steps.append((d.new_device, new, Outcome.DONE if seen.notice is not None else None))
    if seen.notice is not None:
        steps.append((s.insert_mail, mail_args(seen.notice, now), None))
    return steps


@dataclasses.dataclass(frozen=True, slots=True)
class SessionEntry:
    """One of a user's sessions as GetUserSessions shows it (``digest``: the token's; never
    shown)."""

    digest: bytes
    created_at: float
    last_seen: float
    api_key: str | None
    device_name: str
    address: str


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    """One of a user's devices as GetUserDevices shows it."""

    user_id: int
    hash_code: int
    name: str
    address: str
    first_seen: float
    last_seen: float
    trusted_until: float | None


def to_session_entry(row: Row) -> SessionEntry:
    return SessionEntry(
        bytes(row[0]), float(row[1]), float(row[2]), row[3], row[4] or "", row[5] or ""
    )


def to_device(row: Row) -> Device:
    trusted = None if row[6] is None else float(row[6])
    return Device(int(row[0]), int(row[1]), row[2], row[3], float(row[4]), float(row[5]), trusted)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceCodeIssue:
    """A code that would trust ``hash_code`` for ``user_id`` (``Store.issue_device_code``):
    stored as its ``digest`` until ``expires_at``, written with its mail and audit row."""

    user_id: int
    hash_code: int
    name: str
    address: str
    now: float
    digest: bytes
    expires_at: float
    mail: MailItem
    audit: AuditEntry

    def __repr__(self) -> str:
        return f"DeviceCodeIssue(user_id={self.user_id}, hash_code={self.hash_code})"


def code_args(i: DeviceCodeIssue) -> tuple[object, ...]:
    """``issue_code``'s arguments."""
    return (i.user_id, i.hash_code, i.name, i.address, i.now, i.now, i.digest, i.expires_at)
