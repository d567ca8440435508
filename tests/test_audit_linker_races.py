"""The PostgreSQL audit linker under races (store/postgres_audit.py; docs/rules.md, "The audit
trail"): rows committed out of their order, linking queries ended by the server, an import
linking its own rows while both nodes link theirs."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from oms_auth.store.postgres_audit import HOLD_IDLE_SECONDS
from oms_auth.store.postgres_tx import lock_key

from .helpers import PG_URL, eventually, oms_auth, pg_connect, schema_of
from .test_audit_linker import _keep_resetting, _none_pending, _verified
from .test_nodes import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db", ["postgres"], indirect=True)]

_PENDING = (
    "INSERT INTO audit_pending (at, action, source) VALUES (extract(epoch FROM now()), $1, 't')"
)


async def test_a_row_written_first_and_committed_after_a_later_one_is_linked_too(
    cluster: Cluster,
) -> None:
    await cluster.users("alice")
    await cluster.start()
    early, late = await pg_connect(cluster.db), await pg_connect(cluster.db)
    try:
        tx = early.transaction()
        await tx.start()
        await early.execute(_PENDING, "written-first")  # the lower seq, not yet committed
        await late.execute(_PENDING, "written-second")
        gone = "SELECT count(*) = 0 FROM audit_pending WHERE action = 'written-second'"
        await eventually(lambda: late.fetchval(gone), timeout=5)  # linked past the first
        await tx.commit()
        await eventually(lambda: _none_pending(late), timeout=5)
    finally:
        await early.close()
        await late.close()
    ok, actions = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok and actions[-2:] == ["written-second", "written-first"]


async def _terminate_linking(db: str, until: float) -> int:
    """pg_terminate_backend every linking query of the nodes on ``db`` found running."""
    conn = await pg_connect(db)
    ended = 0
    try:
        while time.monotonic() < until:
            ended += await conn.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE $1 AND query LIKE '%audit chain moved%'"
                " AND state = 'active') t",
                f"oms-auth% {schema_of(db)}",
            )
            await asyncio.sleep(0.001)
    finally:
        await conn.close()
    return int(ended)


async def test_linking_queries_ended_by_the_server_under_load_leave_one_intact_chain(
    cluster: Cluster,
) -> None:
    targets = [f"user{n}" for n in range(8)]
    await cluster.users(*targets)
    await cluster.start(reset_requests_per_user=100000)
    stop = asyncio.Event()
    ops = [await cluster.client(n, "op") for n in "abab"]
    load = [asyncio.create_task(_keep_resetting(op, targets, stop)) for op in ops]
    try:
        await asyncio.sleep(0.5)
        ended = await _terminate_linking(cluster.db, time.monotonic() + 6)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), 30)
    print("linking queries ended", ended)
    conn = await pg_connect(cluster.db)
    try:
        await eventually(lambda: _none_pending(conn), timeout=10)
    finally:
        await conn.close()
    ok, actions = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok and "reset-requested" in actions and ended > 0


async def test_an_import_links_its_rows_while_both_nodes_link_theirs(cluster: Cluster) -> None:
    targets = [f"user{n}" for n in range(8)]
    await cluster.users(*targets)
    await cluster.start(reset_requests_per_user=100000)
    rows = [{"UserName": f"imp{n}", "Email": f"imp{n}@example.test"} for n in range(3000)]
    path = cluster.tmp / "users.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"OMS_AUTH_DB": cluster.db, "OMS_AUTH_SECRET_KEY_FILE": str(cluster.key)}
    stop = asyncio.Event()
    ops = [await cluster.client(n, "op") for n in "abab"]
    load = [asyncio.create_task(_keep_resetting(op, targets, stop)) for op in ops]
    try:
        await asyncio.sleep(0.3)
        reader = asyncio.to_thread(oms_auth, cluster.tmp, "audit", "verify", env=env)
        out, verified = await asyncio.gather(
            asyncio.to_thread(oms_auth, cluster.tmp, "user", "import", str(path), env=env),
            reader,
        )
        assert "audit trail intact" in verified.stdout
        assert "imported 3000," in out.stdout, out.stdout[-300:]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), 30)
    conn = await pg_connect(cluster.db)
    try:
        await eventually(lambda: _none_pending(conn), timeout=10)
    finally:
        await conn.close()
    ok, actions = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok and "reset-requested" in actions
    assert len(actions) - actions.count("reset-requested") >= 3000


class _CutAfter:
    """A TCP relay to the test database that forwards a client's messages until one holding
    ``mark`` has gone through whole, then nothing more from the client (the network cut just
    there, the server still connected)."""

    def __init__(self, mark: bytes) -> None:
        self.mark = mark
        self.cut = asyncio.Event()
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
        self.tasks.add(asyncio.create_task(self._to_server(r, w2)))
        self.tasks.add(asyncio.create_task(self._to_client(r2, w)))

    async def _to_client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while chunk := await r.read(65536):
            w.write(chunk)
        w.close()

    async def _to_server(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:  # untyped messages first: an SSLRequest (answered N: ssl is off), startup
            size = int.from_bytes(head := await r.readexactly(4), "big")
            body = await r.readexactly(size - 4)
            w.write(head + body)
            if body[:4] != (80877103).to_bytes(4, "big"):
                break
        while not self.cut.is_set():
            head = await r.readexactly(5)
            message = head + await r.readexactly(int.from_bytes(head[1:], "big") - 4)
            w.write(message)
            if self.mark in message:
                self.cut.set()
        await asyncio.Event().wait()  # what the client sends from now on is lost

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        for w in self.writers:
            w.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def test_an_import_cut_off_just_after_sending_its_audit_rows_holds_the_chain_for_seconds(
    cluster: Cluster,
) -> None:
    await cluster.users("alice")
    rows = [{"UserName": f"imp{n}", "Email": f"imp{n}@example.test"} for n in range(50)]
    path = cluster.tmp / "users.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    relay = _CutAfter(b"user-imported")
    db = cluster.db.replace("127.0.0.1:5432", f"127.0.0.1:{await relay.start()}")
    env = {"OMS_AUTH_DB": db, "OMS_AUTH_SECRET_KEY_FILE": str(cluster.key)}
    importing = asyncio.create_task(
        asyncio.to_thread(oms_auth, cluster.tmp, "user", "import", str(path), env=env, check=False)
    )
    conn = await pg_connect(cluster.db)
    lock = lock_key(schema_of(cluster.db), "audit")
    try:
        await asyncio.wait_for(relay.cut.wait(), 30)
        cut = time.monotonic()
        # The import's session holds the chain; the server ends it once it has waited on its
        # client for HOLD_IDLE_SECONDS (whatever the import was sending when it was cut off).
        await eventually(lambda: _chain_free(conn, lock), timeout=HOLD_IDLE_SECONDS + 5)
        assert time.monotonic() - cut < HOLD_IDLE_SECONDS + 3
    finally:
        await relay.close()
        await conn.close()
        await asyncio.wait_for(importing, 70)


async def _chain_free(conn: Any, lock: int) -> bool:
    held = await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid::text::bigint = $1 AND objid::text::bigint = $2",
        (lock >> 32) & 0xFFFFFFFF,
        lock & 0xFFFFFFFF,
    )
    return bool(held == 0)
