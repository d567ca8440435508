"""Opening the PostgreSQL store's schema: created or migrated to :data:`SCHEMA_VERSION`, the
service key checked first, the usernames' skeletons kept current. Under an advisory lock, in
one transaction: nodes starting at once migrate once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import keys
from . import sql as q
from .audit import ChainKeys, rechain
from .postgres_schema import META, MIGRATIONS, RECHAIN_AFTER, SCHEMA_VERSION, SKELETONS_AFTER
from .postgres_tx import ADVISORY_LOCK, S, lock_key
from .records import SKELETON_VERSION, StoreError

if TYPE_CHECKING:
    from .postgres_pool import Conn

__all__ = ["migrate"]

_SET_META = (
    "INSERT INTO meta (key, value) VALUES ($1, $2)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


async def migrate(
    conn: Conn, schema: str, where: str, audit_key: ChainKeys, key: keys.KeyBinding | None
) -> None:
    """Create or migrate ``schema`` (inside the caller's transaction); StoreError when it is
    newer than this oms-auth, KeyRefused when ``key`` is not the store's."""
    # Two nodes starting at once: the second waits here, then finds the work done.
    await conn.execute(ADVISORY_LOCK, lock_key(schema, "migrate"))
    if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.execute(META)
    found = await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
    version = int(found or 0)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"PostgreSQL schema {schema!r} at {where} has schema version "
            f"{version}; this oms-auth knows up to {SCHEMA_VERSION}"
        )
    if key is not None:  # before migrating: a refused key re-chains nothing
        await keys.bind(
            key,
            audit_key=audit_key,
            version=version,
            where=f"PostgreSQL schema {schema!r} at {where}",
            fetch=lambda sql, args: conn.fetch(q.to_dollar(sql), *args),
        )
    for target in range(version, SCHEMA_VERSION):
        await conn.execute(MIGRATIONS[target])
        if target + 1 in RECHAIN_AFTER:
            links = rechain(audit_key, await conn.fetch(S.audit_chain))
            await conn.executemany(S.relink_audit, links)
        if target + 1 == SKELETONS_AFTER:
            rows = await conn.fetch(S.unskeletoned)
            await conn.executemany(S.set_skeleton, q.skeleton_backfill(rows))
        await conn.execute(_SET_META, "schema_version", str(target + 1))
    await _refresh_skeletons(conn)


async def _refresh_skeletons(conn: Conn) -> None:
    """Recompute every user's skeleton when they were computed with another SKELETON_VERSION
    (or none recorded): look-alikes are found with one data set."""
    recorded = await conn.fetchval("SELECT value FROM meta WHERE key = 'skeleton_version'")
    if recorded == SKELETON_VERSION:
        return
    await conn.execute(S.clear_skeletons)
    rows = await conn.fetch(S.unskeletoned)
    await conn.executemany(S.set_skeleton, q.skeleton_backfill(rows))
    await conn.execute(_SET_META, "skeleton_version", SKELETON_VERSION)
