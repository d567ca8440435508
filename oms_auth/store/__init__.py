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
    is_postgres_url,
    sqlite_path,
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
    if is_postgres_url(url):
        from .postgres import PostgresStore

        store = PostgresStore(url)
    else:
        from .sqlite import SqliteStore

        path = sqlite_path(url)
        Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)
        store = SqliteStore(path)
    await store.open()
    return store
