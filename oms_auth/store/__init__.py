"""Persistence: the interface the engine uses (:mod:`.base`) and its implementations."""

from .base import (
    RESET_FAILURE,
    AuditCheck,
    AuditEntry,
    AuditRow,
    MailItem,
    NewUser,
    OutboxRow,
    ResetCode,
    SecurityQuestion,
    Session,
    Store,
    StoreError,
    User,
    username_key,
)

__all__ = [
    "AuditCheck",
    "RESET_FAILURE",
    "AuditEntry",
    "AuditRow",
    "MailItem",
    "NewUser",
    "OutboxRow",
    "ResetCode",
    "SecurityQuestion",
    "Session",
    "Store",
    "StoreError",
    "User",
    "open_store",
    "username_key",
]


async def open_store(url: str) -> Store:
    """Open the store a ``--db`` value names: ``postgresql://`` (or ``postgres://``) for
    PostgreSQL, shared by several nodes; otherwise a path or ``sqlite:PATH``, the embedded
    default."""
    from pathlib import Path

    store: Store
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        store = PostgresStore(url)
    else:
        from .sqlite import SqliteStore

        path = url.removeprefix("sqlite://").removeprefix("sqlite:")
        Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)
        store = SqliteStore(path)
    await store.open()
    return store
