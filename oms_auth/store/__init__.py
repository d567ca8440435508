"""Persistence: the interface the engine uses, its records, and its two implementations.

Layout (each module one job; imports point down this list, never up):

- :mod:`.codes`: a reset code's states and the moves between them, as a table.
- :mod:`.audit`: the audit trail's keyed hash chain (computing, linking, walking).
- :mod:`.records`: the values crossing the interface (msgspec Structs).
- :mod:`.urls`: what a ``--db`` value names.
- :mod:`.keys`: which service key a store opens with (its fingerprint, the empty-store rule).
- :mod:`.base`: the :class:`Store` interface.
- :mod:`.sql`: the SQL both stores share (texts written once, arguments, row mappers).
- :mod:`.plans`: what each rule-bearing transaction decides, written once for both stores.
- :mod:`.sqlite_schema`, :mod:`.sqlite_writer`, :mod:`.sqlite`: the embedded store, its
  migrations, its single writer.
- :mod:`.postgres_schema`, :mod:`.postgres_listener`, :mod:`.postgres`: the store several nodes
  share, its migrations, its LISTEN/NOTIFY listener.

:func:`open_store` picks the implementation a ``--db`` value names.
"""

from .audit import AuditCheck, ChainKeys
from .base import Store
from .codes import CodeState
from .device_sql import DeviceCodeIssue
from .keys import KeyBinding, KeyRefused
from .records import (
    IN_FLIGHT_SECONDS,
    NO_PASSWORD,
    RESET_FAILURE,
    SKELETON_VERSION,
    AccountChange,
    Admission,
    ApiKey,
    AuditEntry,
    AuditRow,
    Authority,
    CallerGone,
    Claim,
    CodeIssue,
    DeviceSeen,
    Factors,
    Imported,
    ImportItem,
    MailItem,
    MailState,
    NewUser,
    OutboxRow,
    Outcome,
    PasswordReset,
    PendingStep,
    RecoveryUse,
    Reservation,
    ResetCode,
    Revocation,
    Room,
    SecurityQuestion,
    Session,
    SessionOpening,
    Slot,
    StoreError,
    User,
    UsernameConfusable,
    UsernameTaken,
    username_key,
    username_skeleton,
)
from .urls import is_postgres_url, sqlite_path

__all__ = [
    "DeviceCodeIssue",
    "DeviceSeen",
    "Factors",
    "NO_PASSWORD",
    "AccountChange",
    "ApiKey",
    "AuditCheck",
    "ChainKeys",
    "RESET_FAILURE",
    "AuditEntry",
    "AuditRow",
    "Authority",
    "CallerGone",
    "Claim",
    "CodeIssue",
    "CodeState",
    "KeyBinding",
    "KeyRefused",
    "MailItem",
    "MailState",
    "NewUser",
    "ImportItem",
    "Imported",
    "OutboxRow",
    "Outcome",
    "PasswordReset",
    "PendingStep",
    "RecoveryUse",
    "Admission",
    "IN_FLIGHT_SECONDS",
    "Reservation",
    "Room",
    "ResetCode",
    "Revocation",
    "SecurityQuestion",
    "Session",
    "SessionOpening",
    "Slot",
    "Store",
    "StoreError",
    "User",
    "is_postgres_url",
    "open_store",
    "check_location",
    "sqlite_path",
    "username_key",
    "username_skeleton",
    "SKELETON_VERSION",
    "UsernameTaken",
    "UsernameConfusable",
]


def check_location(url: str) -> None:
    """A SQLite store is created on first use, but in a folder that exists: a mistyped path
    must not silently become a new, empty store (docs/operations.md)."""
    if is_postgres_url(url):
        return
    from pathlib import Path

    folder = Path(sqlite_path(url)).resolve().parent
    if not folder.is_dir():
        raise StoreError(f"the folder of --db {sqlite_path(url)} does not exist: {folder}")


async def open_store(
    url: str, *, audit_key: bytes | ChainKeys, key: KeyBinding | None = None
) -> Store:
    """Open the store a ``--db`` value names: ``postgresql://`` (or ``postgres://``) for
    PostgreSQL, shared by several nodes; otherwise a path or ``sqlite:PATH``, the embedded
    default. ``audit_key`` (``crypto.audit_key`` of the service key) keys the audit chain;
    ``key`` (the service key's binding) is checked against the store before it migrates
    (:class:`KeyRefused`), as every command does; without it nothing is checked."""
    store: Store
    if is_postgres_url(url):
        from .postgres import PostgresStore

        store = PostgresStore(url, audit_key=audit_key, key=key)
    else:
        from .sqlite import SqliteStore

        check_location(url)
        store = SqliteStore(sqlite_path(url), audit_key=audit_key, key=key)
    await store.open()
    return store
