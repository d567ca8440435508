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
    """Open the store a ``--db`` value names: a path or ``sqlite:PATH``."""
    from pathlib import Path

    from .sqlite import SqliteStore

    path = url.removeprefix("sqlite://").removeprefix("sqlite:")
    Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(path)
    await store.open()
    return store
