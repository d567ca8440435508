"""Short ways for store tests to make the store's records, and to look at what only tests read
(a code's state, a counter's events) straight in the tables, not through the Store interface."""

from __future__ import annotations

from collections.abc import Sequence

from oms_auth.store import (
    AuditEntry,
    Claim,
    CodeIssue,
    CodeState,
    MailItem,
    Outcome,
    PasswordReset,
    SessionOpening,
    Store,
)

from .helpers import sql


async def issue(
    store: Store,
    user_id: int,
    digest: bytes,
    now: float,
    expires_at: float,
    mail: MailItem,
    audit: Sequence[AuditEntry] = (),
    limit: Claim | None = None,
) -> bool:
    """``Store.issue_code`` with these fields."""
    code = CodeIssue(
        user_id=user_id,
        digest=digest,
        now=now,
        expires_at=expires_at,
        mail=mail,
        audit=audit,
        limit=limit,
    )
    return await store.issue_code(code)


async def redeem(
    store: Store,
    user_id: int,
    digest: bytes,
    password_hash: str,
    now: float,
    mail: MailItem,
    audit: Sequence[AuditEntry] = (),
) -> Outcome:
    """``Store.complete_reset`` with these fields."""
    reset = PasswordReset(
        user_id=user_id,
        digest=digest,
        password_hash=password_hash,
        now=now,
        mail=mail,
        audit=audit,
    )
    return await store.complete_reset(reset)


async def login(
    store: Store, digest: bytes, user_id: int, now: float, password_version: int
) -> Outcome:
    """``Store.open_session`` for a password login."""
    opening = SessionOpening(
        digest=digest, user_id=user_id, now=now, password_version=password_version
    )
    return await store.open_session(opening)


async def code_state(db: str, digest: bytes) -> CodeState | None:
    """The state of the code stored under ``digest``; None when there is none."""
    rows = await sql(db, "SELECT state FROM reset_codes WHERE digest = ?", digest)
    return CodeState(rows[0][0]) if rows else None


async def count_events(db: str, kind: str, key: str, since: float = 0) -> int:
    """The events of one counter after ``since``."""
    query = "SELECT count(*) FROM events WHERE kind = ? AND key = ? AND at > ?"
    ((count,),) = await sql(db, query, kind, key, since)
    return int(count)


async def store_at_version(db: str, version: int, statements: Sequence[str]) -> None:
    """A store as schema ``version`` left it (its first migrations run, nothing after), with
    ``statements`` run in it: what an older deployment hands a newer one to open."""
    import sqlite3

    from oms_auth.store import postgres as pg_store
    from oms_auth.store import sqlite as sqlite_store

    from .helpers import is_postgres, pg_connect, schema_of

    if is_postgres(db):
        conn = await pg_connect(db)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema_of(db)}"')
            for step in pg_store.MIGRATIONS[:version]:
                await conn.execute(step)
            await conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            await conn.execute(f"INSERT INTO meta VALUES ('schema_version', '{version}')")
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
        return
    with sqlite3.connect(db) as lite:
        for step in sqlite_store.MIGRATIONS[:version]:
            lite.executescript(step)
        lite.execute(f"PRAGMA user_version={version}")
        for statement in statements:
            lite.execute(statement)
