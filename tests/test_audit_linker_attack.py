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

from .helpers import settings_for
from .pg_relay import Relay
from .test_audit_linker import TARGETS, all_linked_and_intact, under_load
from .test_nodes import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db", ["postgres"], indirect=True)]


class _Far(Relay):
    """Delays every byte by ``delay`` seconds each way: a reader of the trail some way from
    the database (an operator's shell over a VPN)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def _up(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self._later(r, w)

    async def _down(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self._later(r, w)

    async def _later(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def later() -> None:
            while True:
                at, chunk = await queue.get()
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if not chunk:
                    dst.close()
                    return
                dst.write(chunk)

        self._keep(asyncio.create_task(later()))
        while True:
            chunk = await src.read(65536)
            queue.put_nowait((time.monotonic() + self.delay, chunk))
            if not chunk:
                return


async def test_a_reader_far_from_the_database_links_and_reads_while_both_nodes_link_under_load(
    cluster: Cluster,
) -> None:
    await cluster.users(*TARGETS)
    await cluster.start(reset_requests_per_user=100000)
    far = _Far(0.025)  # 50 ms a round trip: each longer than a node's pass under this load
    db = cluster.db.replace("127.0.0.1:5432", f"127.0.0.1:{await far.start()}")
    assert db != cluster.db
    deps = await build_deps(settings_for(cluster.tmp, db=db, secret_key_file=str(cluster.key)))
    times: list[float] = []
    try:
        async with under_load(cluster, "abab"):
            await asyncio.sleep(0.5)
            for _ in range(5):
                started = time.monotonic()
                # No session holds the chain for seconds: the reader links and reads at once.
                await asyncio.wait_for(deps.store.audit_rows(limit=1), 30)
                times.append(time.monotonic() - started)
    finally:
        await deps.store.close()
        deps.hasher.close()
        await far.close()
    assert max(times) < 5, times
    assert "reset-requested" in await all_linked_and_intact(cluster)


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
