"""Persistence: the interface the engine uses (:mod:`.base`) and its implementations."""

from .base import (
    RESET_FAILURE,
    AuditCheck,
    AuditEntry,
    AuditRow,
    Claim,
    MailItem,
    NewUser,
    OutboxRow,
    Outcome,
    ResetCode,
    Revocation,
    SecurityQuestion,
    Session,
    Store,
    StoreError,
    User,
    is_postgres_url,
    sqlite_path,
    username_key,
)

__all__ = [
    "AuditCheck",
    "RESET_FAILURE",
    "AuditEntry",
    "AuditRow",
    "Claim",
    "MailItem",
    "NewUser",
    "OutboxRow",
    "Outcome",
    "ResetCode",
    "Revocation",
    "SecurityQuestion",
    "Session",
    "Store",
    "StoreError",
    "User",
    "open_store",
    "username_key",
]


async def open_store(url: str, *, audit_key: bytes) -> Store:
    """Open the store a ``--db`` value names: ``postgresql://`` (or ``postgres://``) for
    PostgreSQL, shared by several nodes; otherwise a path or ``sqlite:PATH``, the embedded
    default. ``audit_key`` (``crypto.audit_key`` of the service key) keys the audit chain."""
    from pathlib import Path

    store: Store
    if is_postgres_url(url):
        from .postgres import PostgresStore

        store = PostgresStore(url, audit_key=audit_key)
    else:
        from .sqlite import SqliteStore

        path = sqlite_path(url)
        Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)
        store = SqliteStore(path, audit_key=audit_key)
    await store.open()
    return store
