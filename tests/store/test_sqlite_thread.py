"""The SQLite writer runs its hot jobs whole in aiosqlite's connection thread through
aiosqlite's private ``_execute`` and ``_conn``: this fails first if a new aiosqlite drops them."""

from __future__ import annotations

import threading
from pathlib import Path

import aiosqlite

from oms_auth.store import AuditEntry
from oms_auth.store.sqlite import SqliteStore


async def test_aiosqlite_still_runs_a_function_in_its_connection_thread(tmp_path: Path) -> None:
    async with aiosqlite.connect(str(tmp_path / "t.sqlite3")) as db:
        seen: list[str] = []

        def fn(raw: object, word: str) -> str:
            seen.append(threading.current_thread().name)
            return word

        assert await db._execute(fn, db._conn, "ok") == "ok"  # type: ignore[no-untyped-call]
        assert seen and seen[0] != threading.current_thread().name


async def test_a_failing_whole_job_leaves_no_trace_and_the_others_in_its_batch_stand(
    tmp_path: Path,
) -> None:
    store = SqliteStore(str(tmp_path / "s.sqlite3"), audit_key=b"k" * 32)
    await store.open()
    try:

        def bad(raw: object) -> None:
            raw.execute("INSERT INTO events (kind, key, at) VALUES ('x', 'y', 1)")  # type: ignore[attr-defined]
            raise RuntimeError("no")

        import asyncio

        results = await asyncio.gather(
            store._write_sync(bad),
            store.audit([AuditEntry(action="kept")], 2.0),
            return_exceptions=True,
        )
        assert isinstance(results[0], RuntimeError) and results[1] is None
        assert await store.count_events("x", "y", 0) == 0
        assert [r.action for r in await store.audit_rows()] == ["kept"]
    finally:
        await store.close()
