"""The PostgreSQL audit linker under races (store/postgres_audit.py; docs/rules.md, "The audit
trail"): rows committed out of their order, linking queries ended by the server, an import
linking its own rows while both nodes link theirs."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from oms_auth.store.postgres_audit import HOLD_IDLE_SECONDS
from oms_auth.store.postgres_tx import lock_key

from .helpers import eventually, oms_auth, pg_connect, schema_of
from .pg_relay import Relay
from .test_audit_linker import (
    TARGETS,
    _none_pending,
    _verified,
    all_linked_and_intact,
    chain_free,
    under_load,
)
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
    await cluster.users(*TARGETS)
    await cluster.start(reset_requests_per_user=100000)
    async with under_load(cluster, "abab"):
        await asyncio.sleep(0.5)
        ended = await _terminate_linking(cluster.db, time.monotonic() + 6)
    assert "reset-requested" in await all_linked_and_intact(cluster) and ended > 0


async def test_an_import_links_its_rows_while_both_nodes_link_theirs(cluster: Cluster) -> None:
    await cluster.users(*TARGETS)
    await cluster.start(reset_requests_per_user=100000)
    rows = [{"UserName": f"imp{n}", "Email": f"imp{n}@example.test"} for n in range(3000)]
    path = cluster.tmp / "users.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"OMS_AUTH_DB": cluster.db, "OMS_AUTH_SECRET_KEY_FILE": str(cluster.key)}
    async with under_load(cluster, "abab"):
        await asyncio.sleep(0.3)
        reader = asyncio.to_thread(oms_auth, cluster.tmp, "audit", "verify", env=env)
        out, verified = await asyncio.gather(
            asyncio.to_thread(oms_auth, cluster.tmp, "user", "import", str(path), env=env),
            reader,
        )
        assert "audit trail intact" in verified.stdout
        assert "imported 3000," in out.stdout, out.stdout[-300:]
    actions = await all_linked_and_intact(cluster)
    assert "reset-requested" in actions
    assert len(actions) - actions.count("reset-requested") >= 3000


class _CutAfter(Relay):
    """Forwards a client's messages until one holding ``mark`` has gone through whole, then
    nothing more from the client (the network cut just there, the server still connected)."""

    def __init__(self, mark: bytes) -> None:
        super().__init__()
        self.mark = mark
        self.cut_off = asyncio.Event()

    async def _up(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:  # untyped messages first: an SSLRequest (answered N: ssl is off), startup
            size = int.from_bytes(head := await r.readexactly(4), "big")
            body = await r.readexactly(size - 4)
            w.write(head + body)
            if body[:4] != (80877103).to_bytes(4, "big"):
                break
        while not self.cut_off.is_set():
            head = await r.readexactly(5)
            message = head + await r.readexactly(int.from_bytes(head[1:], "big") - 4)
            w.write(message)
            if self.mark in message:
                self.cut_off.set()
        await asyncio.Event().wait()  # what the client sends from now on is lost


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
        await asyncio.wait_for(relay.cut_off.wait(), 30)
        cut = time.monotonic()
        # The import's session holds the chain; the server ends it once it has waited on its
        # client for HOLD_IDLE_SECONDS (whatever the import was sending when it was cut off).
        await eventually(lambda: chain_free(conn, lock), timeout=HOLD_IDLE_SECONDS + 5)
        assert time.monotonic() - cut < HOLD_IDLE_SECONDS + 3
    finally:
        await relay.close()
        await conn.close()
        await asyncio.wait_for(importing, 70)
