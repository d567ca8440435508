"""The SQLite store's single writer (oms_auth/store/sqlite_writer.py): its own thread on the
standard library's sqlite3, several jobs per commit, each job in a savepoint of its own."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from pathlib import Path

from oms_auth.store import AuditEntry
from oms_auth.store.sqlite import SqliteStore
from oms_auth.store.sqlite_writer import Writer


async def test_a_failing_job_leaves_no_trace_and_the_others_in_its_batch_stand(
    tmp_path: Path,
) -> None:
    store = SqliteStore(str(tmp_path / "s.sqlite3"), audit_key=b"k" * 32)
    await store.open()
    try:

        def bad(raw: sqlite3.Connection) -> None:
            raw.execute("INSERT INTO events (kind, key, at) VALUES ('x', 'y', 1)")
            raise RuntimeError("no")

        results = await asyncio.gather(
            store._write(bad),
            store.audit([AuditEntry(action="kept")], 2.0),
            return_exceptions=True,
        )
        assert isinstance(results[0], RuntimeError) and results[1] is None
        assert [r.action for r in await store.audit_rows()] == ["kept"]
    finally:
        await store.close()
    with sqlite3.connect(str(tmp_path / "s.sqlite3")) as raw:
        assert raw.execute("SELECT count(*) FROM events").fetchone() == (0,)


async def test_jobs_queued_together_share_one_commit_in_the_writers_own_thread(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "w.sqlite3")
    writer = Writer(lambda: sqlite3.connect(path, isolation_level=None))
    await writer.start()
    seen: set[str] = set()

    def job(raw: sqlite3.Connection, *, n: int) -> int:
        seen.add(threading.current_thread().name)
        if n == 0:
            raw.execute("CREATE TABLE t (n INTEGER)")
        raw.execute("INSERT INTO t (n) VALUES (?)", (n,))
        if n == 3:
            raise RuntimeError("job 3 fails after its insert")
        return n

    try:
        answers = await asyncio.gather(
            *(writer.write(functools.partial(job, n=n)) for n in range(5)),
            return_exceptions=True,
        )
        assert answers[:3] == [0, 1, 2] and answers[4] == 4
        assert isinstance(answers[3], RuntimeError)
        assert writer.batches == 1  # one transaction, one commit, for all five
        assert seen and threading.current_thread().name not in seen
    finally:
        await writer.close()
    # Every acknowledged write is committed (another connection sees it); the failed job's
    # insert is not, though it ran in the same transaction.
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT n FROM t ORDER BY n").fetchall() == [(0,), (1,), (2,), (4,)]


async def test_a_write_asked_for_while_the_writer_closes_is_refused_not_left_waiting(
    tmp_path: Path,
) -> None:
    from oms_auth.store import StoreError

    path = str(tmp_path / "c.sqlite3")
    writer = Writer(lambda: sqlite3.connect(path, isolation_level=None))
    await writer.start()
    queued = asyncio.ensure_future(writer.write(lambda raw: raw.execute("SELECT 1").fetchone()))
    closing = asyncio.ensure_future(writer.close())
    await asyncio.sleep(0)  # close has begun: it waits for what was queued before it
    late = asyncio.ensure_future(writer.write(lambda raw: 1))
    assert await asyncio.wait_for(queued, 10) == (1,)
    await asyncio.wait_for(closing, 10)
    try:
        await asyncio.wait_for(late, 10)
        raise AssertionError("a write after close began was answered")
    except StoreError:
        pass


async def test_a_job_asked_for_alone_gets_a_transaction_of_its_own_in_its_place(
    tmp_path: Path,
) -> None:
    # An import queues its next batch while one is written: each must stay one transaction.
    path = str(tmp_path / "a.sqlite3")
    writer = Writer(lambda: sqlite3.connect(path, isolation_level=None))
    await writer.start()
    order: list[int] = []

    def job(raw: sqlite3.Connection, *, n: int) -> int:
        order.append(n)
        return n

    try:
        await writer.write(lambda raw: raw.execute("CREATE TABLE t (n INTEGER)"))
        before = writer.batches
        answers = await asyncio.gather(
            *(writer.write(functools.partial(job, n=n), alone=n in (2, 3)) for n in range(6))
        )
        assert answers == order == list(range(6))
        assert writer.batches - before == 4  # 0 and 1, 2 alone, 3 alone, 4 and 5
    finally:
        await writer.close()
