"""The audit trail: every decision, tamper-evident (a hash chain), filtered and exported. Each
test runs on both stores; rows are edited behind the store's back with plain SQL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from oms_auth.store import AuditEntry, Store, open_store
from oms_auth.store import postgres as pg_store
from oms_auth.store import sqlite as sqlite_store

from .helpers import is_postgres, oms_auth, pg_connect, schema_of, sql


async def write_trail(db: str, n: int = 5) -> Store:
    store = await open_store(db)
    for k in range(n):
        entry = AuditEntry(action=f"action-{k}", target_name=f"user{k % 2}", source="test")
        await store.audit([entry], 1_800_000_000.0 + k * 60)
    return store


async def test_an_untouched_trail_verifies(db: str) -> None:
    store = await write_trail(db)
    check = await store.verify_audit()
    await store.close()
    assert check.ok and check.rows == 5 and len(check.last_hash) == 64


async def test_an_edited_row_is_found(tmp_path: Path, db: str) -> None:
    await (await write_trail(db)).close()
    await sql(db, "UPDATE audit SET detail = 'nothing to see' WHERE id = 3")
    out = oms_auth(tmp_path, "audit", "verify", "--db", db, check=False)
    assert out.returncode == 1
    assert "BROKEN at row 3: its content was changed" in out.stdout


async def test_a_deleted_row_is_found(tmp_path: Path, db: str) -> None:
    await (await write_trail(db)).close()
    await sql(db, "DELETE FROM audit WHERE id = 2")
    out = oms_auth(tmp_path, "audit", "verify", "--db", db, check=False)
    assert out.returncode == 1 and "BROKEN at row 3: a row before it was deleted" in out.stdout


async def test_verify_says_intact_with_the_count_and_last_hash(tmp_path: Path, db: str) -> None:
    await (await write_trail(db)).close()
    out = oms_auth(tmp_path, "audit", "verify", "--db", db)
    assert out.stdout.startswith("audit trail intact: 5 rows, last hash ")


async def test_filters_by_user_and_time_and_exports_json_lines(tmp_path: Path, db: str) -> None:
    await (await write_trail(db)).close()
    shown = oms_auth(tmp_path, "audit", "--db", db, "--user", "USER1").stdout
    assert [line.split()[1] for line in shown.splitlines()] == ["action-3", "action-1"]
    window = ["--since", "2027-01-15T08:01:00Z", "--until", "2027-01-15T08:03:00Z"]
    exported = oms_auth(tmp_path, "audit", "export", "--db", db, *window).stdout
    records = [json.loads(line) for line in exported.splitlines()]
    assert [r["action"] for r in records] == ["action-1", "action-2"]
    assert set(records[0]) >= {"id", "time", "action", "source", "prev_hash", "hash"}
    bad = oms_auth(tmp_path, "audit", "--db", db, "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "not an ISO time" in bad.stderr


async def test_a_trail_written_before_the_chain_existed_is_chained_on_upgrade(db: str) -> None:
    # A store at schema version 1 (before the chain), made the way that version made it.
    if is_postgres(db):
        conn = await pg_connect(db)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema_of(db)}"')
            await conn.execute(pg_store.MIGRATIONS[0])
            await conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            await conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
            await conn.execute("INSERT INTO audit (id, at, action) VALUES (1, 1.0, 'old-1')")
            await conn.execute("INSERT INTO audit (id, at, action) VALUES (2, 2.0, 'old-2')")
        finally:
            await conn.close()
    else:
        with sqlite3.connect(db) as conn:
            conn.executescript(sqlite_store.MIGRATIONS[0])
            conn.execute("PRAGMA user_version=1")
            conn.execute("INSERT INTO audit (at, action) VALUES (1.0, 'old-1'), (2.0, 'old-2')")
    store = await open_store(db)
    await store.audit([AuditEntry(action="new")], 3.0)
    check = await store.verify_audit()
    await store.close()
    assert check.ok and check.rows == 3
