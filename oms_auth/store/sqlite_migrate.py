"""Opening the SQLite store's schema: created or migrated to :data:`SCHEMA_VERSION` in one
transaction, the service key checked first, the usernames' skeletons kept current. Run on the
reader's connection before it turns read-only and the writer starts: nothing else writes yet."""

from __future__ import annotations

from typing import Any

import aiosqlite

from . import keys
from . import sql as q
from .audit import ChainKeys, rechain
from .records import SKELETON_VERSION, StoreError
from .sqlite_schema import META, MIGRATIONS, RECHAIN_AFTER, SCHEMA_VERSION, SKELETONS_AFTER

__all__ = ["migrate"]

S = q.SQLITE


async def _all(db: aiosqlite.Connection, sql: str, params: Any = ()) -> list[Any]:
    return list(await db.execute_fetchall(sql, params))


async def migrate(
    db: aiosqlite.Connection, path: str, audit_key: ChainKeys, key: keys.KeyBinding | None
) -> None:
    """Create or migrate the store at ``path``; StoreError when it is newer than this
    oms-auth, KeyRefused when ``key`` is not the store's. Nothing changes then."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        ((version,),) = await _all(db, "PRAGMA user_version")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {path} has schema version {version}; "
                f"this oms-auth knows up to {SCHEMA_VERSION}"
            )
        await db.execute(META)
        if key is not None:  # before migrating: a refused key re-chains nothing
            await keys.bind(
                key,
                audit_key=audit_key,
                version=version,
                where=f"the store {path}",
                fetch=lambda sql, args: _all(db, sql, args),
            )
        for target in range(version, SCHEMA_VERSION):
            await _step(db, target, audit_key)
        await _refresh_skeletons(db)
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise


async def _step(db: aiosqlite.Connection, target: int, audit_key: ChainKeys) -> None:
    """From version ``target`` to the next."""
    for statement in MIGRATIONS[target].split(";"):
        if statement.strip():
            await db.execute(statement)
    if target + 1 in RECHAIN_AFTER:
        links = rechain(audit_key, await _all(db, S.audit_chain))
        await db.executemany(S.relink_audit, links)
    if target + 1 == SKELETONS_AFTER:
        rows = await _all(db, S.unskeletoned)
        await db.executemany(S.set_skeleton, q.skeleton_backfill(rows))
    await db.execute(f"PRAGMA user_version={target + 1}")


async def _refresh_skeletons(db: aiosqlite.Connection) -> None:
    """Recompute every user's skeleton when they were computed with another SKELETON_VERSION
    (or none recorded): look-alikes are found with one data set."""
    recorded = await _all(db, "SELECT version FROM skeleton_version")
    if recorded and recorded[0][0] == SKELETON_VERSION:
        return
    await db.execute(S.clear_skeletons)
    rows = await _all(db, S.unskeletoned)
    await db.executemany(S.set_skeleton, q.skeleton_backfill(rows))
    await db.execute("DELETE FROM skeleton_version")
    await db.execute("INSERT INTO skeleton_version (version) VALUES (?)", (SKELETON_VERSION,))
