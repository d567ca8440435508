"""The audit trail: every decision, tamper-evident (a hash chain), filtered and exported."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from oms_auth.store import AuditEntry
from oms_auth.store.sqlite import MIGRATIONS, SqliteStore

from .helpers import oms_auth


async def write_trail(path: Path, n: int = 5) -> SqliteStore:
    store = SqliteStore(str(path))
    await store.open()
    for k in range(n):
        entry = AuditEntry(action=f"action-{k}", target_name=f"user{k % 2}", source="test")
        await store.audit([entry], 1_800_000_000.0 + k * 60)
    return store


async def test_an_untouched_trail_verifies(tmp_path: Path) -> None:
    store = await write_trail(tmp_path / "a.sqlite3")
    check = await store.verify_audit()
    await store.close()
    assert check.ok and check.rows == 5 and len(check.last_hash) == 64


async def test_an_edited_row_is_found(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite3"
    await (await write_trail(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit SET detail = 'nothing to see' WHERE id = 3")
    out = oms_auth(tmp_path, "audit", "verify", "--db", str(db), check=False)
    assert out.returncode == 1
    assert "BROKEN at row 3: its content was changed" in out.stdout


async def test_a_deleted_row_is_found(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite3"
    await (await write_trail(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit WHERE id = 2")
    out = oms_auth(tmp_path, "audit", "verify", "--db", str(db), check=False)
    assert out.returncode == 1 and "BROKEN at row 3: a row before it was deleted" in out.stdout


async def test_verify_says_intact_with_the_count_and_last_hash(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite3"
    await (await write_trail(db)).close()
    out = oms_auth(tmp_path, "audit", "verify", "--db", str(db))
    assert out.stdout.startswith("audit trail intact: 5 rows, last hash ")


async def test_filters_by_user_and_time_and_exports_json_lines(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite3"
    await (await write_trail(db)).close()
    shown = oms_auth(tmp_path, "audit", "--db", str(db), "--user", "USER1").stdout
    assert [line.split()[1] for line in shown.splitlines()] == ["action-3", "action-1"]
    window = ["--since", "2027-01-15T08:01:00Z", "--until", "2027-01-15T08:03:00Z"]
    exported = oms_auth(tmp_path, "audit", "export", "--db", str(db), *window).stdout
    records = [json.loads(line) for line in exported.splitlines()]
    assert [r["action"] for r in records] == ["action-1", "action-2"]
    assert set(records[0]) >= {"id", "time", "action", "source", "prev_hash", "hash"}
    bad = oms_auth(tmp_path, "audit", "--db", str(db), "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "not an ISO time" in bad.stderr


async def test_a_trail_written_before_the_chain_existed_is_chained_on_upgrade(
    tmp_path: Path,
) -> None:
    db = tmp_path / "old.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute("PRAGMA user_version=1")
        conn.execute("INSERT INTO audit (at, action) VALUES (1.0, 'old-1'), (2.0, 'old-2')")
    store = SqliteStore(str(db))
    await store.open()
    await store.audit([AuditEntry(action="new")], 3.0)
    check = await store.verify_audit()
    await store.close()
    assert check.ok and check.rows == 3
