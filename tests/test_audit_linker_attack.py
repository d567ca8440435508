"""The PostgreSQL audit linker attacked (store/postgres_audit.py; docs/rules.md, "The audit
trail"): two nodes linking under load, readers far from the database meanwhile, texts that
could end a quote."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from oms_auth.app import build_deps
from oms_auth.store.records import AuditEntry

from .helpers import PG_URL, eventually, pg_connect, settings_for
from .test_audit_linker import _keep_resetting, _none_pending, _verified
from .test_nodes import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db", ["postgres"], indirect=True)]


class _Far:
    """A TCP relay to the test database that delays every byte by ``delay`` seconds each way:
    a reader of the trail some way from the database (an operator's shell over a VPN)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        host, port = PG_URL.split("@", 1)[1].split("/", 1)[0].split(":")
        r2, w2 = await asyncio.open_connection(host, int(port))
        self.writers += [w, w2]
        for src, dst in ((r, w2), (r2, w)):
            self.tasks.add(asyncio.create_task(self._pipe(src, dst)))

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def later() -> None:
            while True:
                at, chunk = await queue.get()
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if not chunk:
                    dst.close()
                    return
                dst.write(chunk)

        self.tasks.add(asyncio.create_task(later()))
        while True:
            chunk = await src.read(65536)
            queue.put_nowait((time.monotonic() + self.delay, chunk))
            if not chunk:
                return

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        for w in self.writers:
            w.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def test_a_reader_far_from_the_database_links_and_reads_while_both_nodes_link_under_load(
    cluster: Cluster,
) -> None:
    targets = [f"user{n}" for n in range(8)]
    await cluster.users(*targets)
    await cluster.start(reset_requests_per_user=100000)
    stop = asyncio.Event()
    ops = [await cluster.client(n, "op") for n in "abab"]
    load = [asyncio.create_task(_keep_resetting(op, targets, stop)) for op in ops]
    far = _Far(0.025)  # 50 ms a round trip: each longer than a node's pass under this load
    db = cluster.db.replace("127.0.0.1:5432", f"127.0.0.1:{await far.start()}")
    assert db != cluster.db
    deps = await build_deps(settings_for(cluster.tmp, db=db, secret_key_file=str(cluster.key)))
    times: list[float] = []
    try:
        await asyncio.sleep(0.5)
        for _ in range(5):
            started = time.monotonic()
            # No session holds the chain for seconds: the reader links and reads at once.
            await asyncio.wait_for(deps.store.audit_rows(limit=1), 30)
            times.append(time.monotonic() - started)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), 30)
        await deps.store.close()
        deps.hasher.close()
        await far.close()
    assert max(times) < 5, times
    conn = await pg_connect(cluster.db)
    try:
        await eventually(lambda: _none_pending(conn), timeout=5)
    finally:
        await conn.close()
    ok, actions = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok and "reset-requested" in actions


_TEXTS = [
    *("$q0$", "$q0", "x$", "$", "$$", "$q0$$q1$", "$q1$'; DROP TABLE audit; --", "\\"),
    *("\\u0000", "\x00", "'", "\u2028\u2029", "\U0001f600", 'a\\"b', "\t\r\n"),
    *("é" * 70000, "$q" * 1000, "x" * 1_000_000),
]


async def test_texts_that_could_end_a_quote_or_escape_are_linked_as_written(
    tmp_path: Path, db: str
) -> None:
    deps = await build_deps(settings_for(tmp_path, db=db))
    try:
        many = [AuditEntry(action="odd", target_name=t, source=t[:200], detail=t) for t in _TEXTS]
        await deps.store.audit(many, time.time())
        for t in _TEXTS:
            entry = AuditEntry(action="odd", target_name=t, detail=t)
            await deps.store.audit([entry], time.time())
        rows = await deps.store.audit_rows(limit=None, oldest_first=True)
        check = await deps.store.verify_audit()
        assert check.ok, check
        stored = [t.replace("\x00", "\ufffd") for t in _TEXTS]
        assert [r.detail for r in rows if r.action == "odd"] == stored * 2
        assert [r.target_name for r in rows if r.action == "odd"] == stored * 2
    finally:
        await deps.store.close()
        deps.hasher.close()
