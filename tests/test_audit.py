"""The audit trail: every decision, tamper-evident (a hash chain keyed with a key derived from
the service key), filtered and exported, printed escaped. Each test runs on both stores; rows
are edited behind the store's back with plain SQL."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from oms_auth.config import Settings
from oms_auth.crypto import audit_key, load_or_create_key
from oms_auth.store import AuditEntry, AuditRow, Store, open_store
from oms_auth.store import postgres as pg_store
from oms_auth.store import sqlite as sqlite_store
from oms_auth.store.audit import chain_hash

from .helpers import is_postgres, oms_auth, pg_connect, schema_of, sql


def cli_key(tmp_path: Path, db: str) -> bytes:
    """The audit key ``oms-auth`` run in ``tmp_path`` derives, from the key file it reads there
    (created here first), so stores the tests open and the command agree."""
    path = tmp_path / "oms-auth.key" if is_postgres(db) else Settings(db=db).key_file()
    return audit_key(load_or_create_key(path, os.environ.get("OMS_AUTH_SECRET_KEY")))


async def write_trail(tmp_path: Path, db: str, n: int = 5) -> Store:
    store = await open_store(db, audit_key=cli_key(tmp_path, db))
    for k in range(n):
        entry = AuditEntry(action=f"action-{k}", target_name=f"user{k % 2}", source="test")
        await store.audit([entry], 1_800_000_000.0 + k * 60)
    return store


async def test_an_untouched_trail_verifies(tmp_path: Path, db: str) -> None:
    store = await write_trail(tmp_path, db)
    check = await store.verify_audit()
    await store.close()
    assert check.ok and check.rows == 5 and len(check.last_hash) == 64


async def test_an_edited_row_is_found(tmp_path: Path, db: str) -> None:
    await (await write_trail(tmp_path, db)).close()
    await sql(db, "UPDATE audit SET detail = 'nothing to see' WHERE id = 3")
    out = oms_auth(tmp_path, "audit", "verify", "--db", db, check=False)
    assert out.returncode == 1
    assert "BROKEN at row 3: its content was changed" in out.stdout


async def test_a_deleted_row_is_found(tmp_path: Path, db: str) -> None:
    await (await write_trail(tmp_path, db)).close()
    await sql(db, "DELETE FROM audit WHERE id = 2")
    out = oms_auth(tmp_path, "audit", "verify", "--db", db, check=False)
    assert out.returncode == 1 and "BROKEN at row 3: a row before it was deleted" in out.stdout


async def test_verify_says_intact_with_the_count_and_last_hash(tmp_path: Path, db: str) -> None:
    await (await write_trail(tmp_path, db)).close()
    out = oms_auth(tmp_path, "audit", "verify", "--db", db)
    assert out.stdout.startswith("audit trail intact: 5 rows, last hash ")


async def test_filters_by_user_and_time_and_exports_json_lines(tmp_path: Path, db: str) -> None:
    await (await write_trail(tmp_path, db)).close()
    shown = oms_auth(tmp_path, "audit", "--db", db, "--user", "USER1").stdout
    assert [line.split()[1] for line in shown.splitlines()] == ["action-3", "action-1"]
    window = ["--since", "2027-01-15T08:01:00Z", "--until", "2027-01-15T08:03:00Z"]
    exported = oms_auth(tmp_path, "audit", "export", "--db", db, *window).stdout
    records = [json.loads(line) for line in exported.splitlines()]
    assert [r["action"] for r in records] == ["action-1", "action-2"]
    assert set(records[0]) >= {"id", "time", "action", "source", "prev_hash", "hash"}
    bad = oms_auth(tmp_path, "audit", "--db", db, "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "not an ISO time" in bad.stderr


async def test_a_trail_written_before_the_chain_existed_is_chained_on_upgrade(
    tmp_path: Path, db: str
) -> None:
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
    store = await open_store(db, audit_key=cli_key(tmp_path, db))
    await store.audit([AuditEntry(action="new")], 3.0)
    check = await store.verify_audit()
    await store.close()
    assert check.ok and check.rows == 3


# -- the chain is keyed: an edit re-hashed without the key is found -----------------------------

Link = Callable[..., str]


def plain_link(prev: str, *fields: object) -> str:
    """A link as schema 2 made them: SHA-256 with no key, what anyone with the store can do."""
    return hashlib.sha256(msgspec.json.encode([prev, *fields])).hexdigest()


def fields_of(row: AuditRow) -> tuple[object, ...]:
    return (
        row.id,
        row.at,
        row.action,
        row.actor_id,
        row.target_id,
        row.target_name,
        row.source,
        row.detail,
    )


async def edit_and_rehash(db: str, rows: list[AuditRow], edited: int, link: Link) -> None:
    """Change row ``edited`` and re-hash it and every row after it with ``link``, as someone
    who holds the store would to hide the edit."""
    prev = ""
    for row in rows:
        if row.id < edited:
            prev = row.hash
            continue
        if row.id == edited:
            row = msgspec.structs.replace(row, detail="nothing to see")
        digest = link(prev, *fields_of(row))
        await sql(
            db,
            "UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE id = ?",
            row.detail,
            prev,
            digest,
            row.id,
        )
        prev = digest


@pytest.mark.parametrize("forger", ["plain-sha256", "hmac-wrong-key"])
async def test_an_edit_re_hashed_without_the_key_is_found(
    tmp_path: Path, db: str, forger: str
) -> None:
    key = cli_key(tmp_path, db)
    store = await write_trail(tmp_path, db)
    assert (await store.verify_audit()).ok
    rows = await store.audit_rows(limit=None, oldest_first=True)
    await store.close()
    assert oms_auth(tmp_path, "audit", "verify", "--db", db).returncode == 0
    link: Link = (
        plain_link if forger == "plain-sha256" else functools.partial(chain_hash, os.urandom(32))
    )
    await edit_and_rehash(db, rows, 3, link)
    out = oms_auth(tmp_path, "audit", "verify", "--db", db, check=False)
    assert out.returncode == 1
    assert "BROKEN at row 3: its content was changed" in out.stdout
    store = await open_store(db, audit_key=key)
    check = await store.verify_audit()
    await store.close()
    assert (check.bad_id, check.rows) == (3, 2)


async def test_the_forgery_above_holds_only_with_the_key(tmp_path: Path, db: str) -> None:
    # The same edit re-hashed under the real key verifies: the key alone is what stops it.
    store = await write_trail(tmp_path, db)
    rows = await store.audit_rows(limit=None, oldest_first=True)
    await store.close()
    await edit_and_rehash(db, rows, 3, functools.partial(chain_hash, cli_key(tmp_path, db)))
    assert oms_auth(tmp_path, "audit", "verify", "--db", db).stdout.startswith(
        "audit trail intact: 5 rows"
    )


async def test_a_trail_chained_without_the_key_is_re_chained_keyed_on_upgrade(
    tmp_path: Path, db: str
) -> None:
    # A store at schema version 2 (chained with plain SHA-256), made the way that version did.
    chained, prev = [], ""
    for n in (1, 2):
        digest = plain_link(prev, n, float(n), f"old-{n}", None, None, f"user{n}", None, None)
        chained.append((n, float(n), f"old-{n}", f"user{n}", prev, digest))
        prev = digest
    insert = "INSERT INTO audit (id, at, action, target_name, prev_hash, hash)"
    if is_postgres(db):
        conn = await pg_connect(db)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema_of(db)}"')
            await conn.execute(pg_store.MIGRATIONS[0])
            await conn.execute(pg_store.MIGRATIONS[1])
            await conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            await conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
            await conn.executemany(insert + " VALUES ($1, $2, $3, $4, $5, $6)", chained)
        finally:
            await conn.close()
    else:
        with sqlite3.connect(db) as conn:
            conn.executescript(sqlite_store.MIGRATIONS[0] + ";" + sqlite_store.MIGRATIONS[1])
            conn.execute("PRAGMA user_version=2")
            conn.executemany(insert + " VALUES (?, ?, ?, ?, ?, ?)", chained)
    store = await open_store(db, audit_key=cli_key(tmp_path, db))
    check = await store.verify_audit()
    await store.audit([AuditEntry(action="new")], 3.0)
    rows = await store.audit_rows(limit=None, oldest_first=True)
    after = await store.verify_audit()
    await store.close()
    assert check.ok and check.rows == 2
    assert after.ok and after.rows == 3
    assert [r.target_name for r in rows] == ["user1", "user2", None]  # the rows themselves stay
    assert rows[0].hash != chained[0][5] and rows[1].hash != chained[1][5]  # now keyed
    assert oms_auth(tmp_path, "audit", "verify", "--db", db).returncode == 0
    other = await open_store(db, audit_key=audit_key(os.urandom(32)))
    wrong = await other.verify_audit()
    await other.close()
    assert wrong.bad_id == 1


def test_a_store_refuses_an_audit_key_that_cannot_be_one() -> None:
    for bad in (b"", b"short"):
        with pytest.raises(ValueError, match="audit key must be 32 bytes"):
            sqlite_store.SqliteStore("unused.sqlite3", audit_key=bad)
        with pytest.raises(ValueError, match="audit key must be 32 bytes"):
            pg_store.PostgresStore("postgresql://db1/auth", audit_key=bad)


# -- printed rows escape control characters ----------------------------------------------------


async def test_printed_rows_escape_control_characters(tmp_path: Path, db: str) -> None:
    # A username a client chose: a newline (a forged second row), colours, a right-to-left
    # override, DEL, a C1 CSI, a line separator, a backslash.
    name = "bob\n2027-01-15T08:00:00Z set name=alice\x1b[31m\u202eevil\x7f\x9b\u2028\\x1b"
    store = await open_store(db, audit_key=cli_key(tmp_path, db))
    entry = AuditEntry(action="login-failed", target_name=name, source="10.0.0.1", detail="a\tb")
    await store.audit([entry], 1_800_000_000.0)
    await store.close()

    shown = oms_auth(tmp_path, "audit", "--db", db).stdout
    assert shown.endswith("\n") and shown[:-1].isprintable()  # no ESC, newline, U+202E, ...
    assert len(shown.splitlines()) == 1
    escaped = (
        "name=bob\\n2027-01-15T08:00:00Z set name=alice\\x1b[31m\\u202eevil\\x7f\\x9b\\u2028"
        "\\\\x1b source=10.0.0.1 detail=a\\tb"
    )
    assert shown.rstrip("\n").endswith(escaped), shown

    exported = oms_auth(tmp_path, "audit", "export", "--db", db).stdout
    assert exported.endswith("\n") and exported[:-1].isprintable()
    (record,) = [json.loads(line) for line in exported.splitlines()]
    assert record["target_name"] == name and record["detail"] == "a\tb"
