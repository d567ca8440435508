"""The audit trail on PostgreSQL is linked after commit (docs/rules.md, "The audit trail";
docs/performance.md): no decision waits for the chain, on any node; every committed decision's
row ends up in the chain, in order, whichever node links it, and the chain verifies."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from oms_auth.app import build_deps
from oms_auth.keyring import read_ring
from oms_auth.keyservice import POLL_SECONDS, chain_keys
from oms_auth.store import StoreError
from oms_auth.store.postgres_audit import (
    GATHER_SECONDS,
    IDLE_SECONDS,
    READER_WAIT_SECONDS,
    AuditLinker,
)
from oms_auth.store.postgres_tx import lock_key
from oms_auth.store.records import AuditEntry
from oms_auth.tasks import cancel

from .helpers import (
    PG_URL,
    ServerProcess,
    eventually,
    oms_auth,
    pg_connect,
    schema_of,
    settings_for,
    sql,
)
from .test_nodes import OK, Cluster

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db", ["postgres"], indirect=True)]


async def _verified(tmp: Path, db: str, key: Path) -> tuple[bool, list[str]]:
    """``audit verify`` as an operator runs it, and the actions of the chain, oldest first."""
    deps = await build_deps(settings_for(tmp, db=db, secret_key_file=str(key)))
    try:
        check = await deps.store.verify_audit()
        rows = await deps.store.audit_rows(limit=None, oldest_first=True)
        assert [r.id for r in rows] == list(range(1, len(rows) + 1))
        return check.ok, [r.action for r in rows]
    finally:
        await deps.store.close()
        deps.hasher.close()


async def test_resets_on_both_nodes_are_answered_while_the_audit_chain_is_locked(
    cluster: Cluster,
) -> None:
    targets = [f"user{n}" for n in range(20)]
    await cluster.users(*targets)
    await cluster.start()
    ops = {"a": await cluster.client("a", "op"), "b": await cluster.client("b", "op")}
    holder = await pg_connect(cluster.db)
    try:
        # Someone holds the chain's lock (a linker stalled, an operator's long query).
        await holder.execute(
            "SELECT pg_advisory_lock($1)", lock_key(schema_of(cluster.db), "audit")
        )
        calls = [
            ops["ab"[n % 2]].call("ResetPassword", {"UserName": t}) for n, t in enumerate(targets)
        ]
        answers = await asyncio.wait_for(asyncio.gather(*calls), 15)
        assert [a.o for a in answers] == [OK] * 20
        pending = await holder.fetchval(
            "SELECT count(*) FROM audit_pending WHERE action = 'reset-requested'"
        )
        assert pending == 20  # committed with their decisions, waiting to be linked
    finally:
        await holder.close()  # the lock goes with the connection
    ok, actions = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok and actions.count("reset-requested") == 20


async def test_rows_a_stopped_node_left_unlinked_are_linked_by_the_other_node(
    cluster: Cluster,
) -> None:
    await cluster.users("alice")
    await cluster.start()
    await cluster.client("b", "alice")  # node b has written (its linker runs)
    conn = await pg_connect(cluster.db)
    try:
        await eventually(lambda: _none_pending(conn))
        await cluster.nodes["a"].stop()
        # What a node that committed a decision and died before linking leaves behind.
        await conn.execute(
            "INSERT INTO audit_pending (at, action, target_name, source)"
            " VALUES (extract(epoch FROM now()), 'left-by-a-dead-node', 'alice', '127.0.0.9')"
        )
        await eventually(lambda: _none_pending(conn), timeout=5)  # b's idle pass
    finally:
        await conn.close()
    ok, actions = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok and actions[-1] == "left-by-a-dead-node"


async def _none_pending(conn: Any) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM audit_pending") == 0)


async def test_rows_written_after_a_node_takes_up_a_rotated_ring_are_chained_with_its_new_key(
    cluster: Cluster,
) -> None:
    await cluster.users("alice")
    await cluster.start()
    for node in ("a", "b"):
        await cluster.client(node, "alice")  # each node's linker has run with the old ring
    old = read_ring(cluster.key)
    assert old is not None
    env = {"OMS_AUTH_DB": cluster.db, "OMS_AUTH_SECRET_KEY_FILE": str(cluster.key)}
    await asyncio.to_thread(oms_auth, cluster.tmp, "key", "rotate", env=env)
    new = read_ring(cluster.key)
    assert new is not None and new.current.id != old.current.id
    (before,) = await sql(cluster.db, "SELECT max(id) FROM audit")
    await asyncio.sleep(3 * POLL_SECONDS)  # both nodes take the ring up (within 2 s)
    for node in ("a", "b"):
        await cluster.client(node, "alice")
    rows = await sql(cluster.db, "SELECT action, key_id FROM audit WHERE id > ?", before[0])
    assert [a for a, _ in rows].count("login") == 2
    assert {k for _, k in rows} == {new.current.id}, rows
    ok, _ = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok


def _linker_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") == "AuditLinker._run"
    ]


async def test_no_linker_task_outlives_its_store_even_when_a_write_commits_during_close(
    tmp_path: Path, db: str
) -> None:
    deps = await build_deps(settings_for(tmp_path, db=db))
    store = deps.store
    try:
        entry = AuditEntry(action="written-while-closing", source="test")
        write = asyncio.create_task(store.audit([entry], time.time()))
        await asyncio.sleep(0)  # the write has its connection; close waits for it
        await store.close()
        await write
        await asyncio.sleep(GATHER_SECONDS + 0.1)
        assert _linker_tasks() == []
    finally:
        for task in _linker_tasks():
            await cancel(task)
        deps.hasher.close()
    # What the write committed is linked by whoever opens the store next.
    ok, actions = await _verified(tmp_path, db, tmp_path / "oms-auth.key")
    assert ok and actions[-1] == "written-while-closing"


async def test_a_linker_goes_on_linking_after_a_fault_of_its_own(tmp_path: Path, db: str) -> None:
    deps = await build_deps(settings_for(tmp_path, db=db))
    await deps.store.close()  # the schema is made; only the linker below links
    deps.hasher.close()
    ring = read_ring(tmp_path / "oms-auth.key")
    assert ring is not None
    key = chain_keys(ring)
    faults = [RuntimeError("a fault of the code")]

    def keys() -> Any:
        if faults:
            raise faults.pop()
        return key

    pool = await asyncpg.create_pool(PG_URL, server_settings={"search_path": schema_of(db)})
    linker = AuditLinker(lambda: pool, keys, lock_key(schema_of(db), "audit"))
    conn = await pg_connect(db)
    try:
        linker.start()
        await conn.execute(
            "INSERT INTO audit_pending (at, action, source) VALUES (0, 'after-a-fault', 'test')"
        )
        # The first pass meets the fault; the idle pass after it links the row.
        await eventually(lambda: _none_pending(conn), timeout=3 * IDLE_SECONDS + 5)
        assert not faults
    finally:
        await linker.stop()
        await conn.close()
        await pool.close()
    ok, actions = await _verified(tmp_path, db, tmp_path / "oms-auth.key")
    assert ok and actions[-1] == "after-a-fault"


async def test_rows_left_pending_are_linked_by_a_node_that_has_written_nothing_since_it_started(
    cluster: Cluster,
) -> None:
    await cluster.users("alice")
    conn = await pg_connect(cluster.db)
    try:
        # What a node killed after committing a decision, before linking it, leaves behind.
        await conn.execute(
            "INSERT INTO audit_pending (at, action, target_name, source)"
            " VALUES (extract(epoch FROM now()), 'left-by-a-killed-node', 'alice', '127.0.0.9')"
        )
        await cluster.start()  # restarted nodes no request reaches
        await eventually(lambda: _none_pending(conn), timeout=5)
    finally:
        await conn.close()
    ok, actions = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok and actions[-1] == "left-by-a-killed-node"


async def test_a_node_stops_promptly_while_another_holds_the_chain_and_its_rows_are_linked_later(
    cluster: Cluster,
) -> None:
    await cluster.users("alice")
    await cluster.start()
    op = await cluster.client("a", "op")
    holder = await pg_connect(cluster.db)
    try:
        # Someone holds the chain's lock (a linker stalled, an operator's long query).
        await holder.execute(
            "SELECT pg_advisory_lock($1)", lock_key(schema_of(cluster.db), "audit")
        )
        assert (await op.call("ResetPassword", {"UserName": "alice"})).o == OK
        started = time.monotonic()
        await asyncio.wait_for(cluster.nodes["a"].stop(), 20)
        assert time.monotonic() - started < 10  # drain_seconds, not the lock's holder
        pending = await holder.fetchval("SELECT count(*) FROM audit_pending")
        assert pending >= 1  # committed, left for the next pass of any node
    finally:
        await holder.close()
    conn = await pg_connect(cluster.db)
    try:
        await eventually(lambda: _none_pending(conn), timeout=5)  # node b's idle pass
    finally:
        await conn.close()
    ok, actions = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok and "reset-requested" in actions


async def test_audit_verify_says_in_one_line_that_the_chain_is_held_when_it_cannot_link(
    cluster: Cluster,
) -> None:
    await cluster.users("alice")
    env = {"OMS_AUTH_DB": cluster.db, "OMS_AUTH_SECRET_KEY_FILE": str(cluster.key)}
    holder = await pg_connect(cluster.db)
    try:
        await holder.execute(
            "SELECT pg_advisory_lock($1)", lock_key(schema_of(cluster.db), "audit")
        )
        await holder.execute(
            "INSERT INTO audit_pending (at, action, target_name, source)"
            " VALUES (extract(epoch FROM now()), 'pending', 'alice', '127.0.0.9')"
        )
        started = time.monotonic()
        out = await asyncio.to_thread(
            oms_auth, cluster.tmp, "audit", "verify", env=env, check=False
        )
        assert time.monotonic() - started < 20
        # Not 1 (a broken chain, to a script that watches it) and no traceback.
        assert out.returncode == 2, (out.stdout, out.stderr[-300:])
        assert out.stderr.count("\n") == 1 and "audit" in out.stderr, out.stderr
    finally:
        await holder.close()
    verified = await asyncio.to_thread(oms_auth, cluster.tmp, "audit", "verify", env=env)
    assert "audit trail intact" in verified.stdout


async def test_a_reader_waits_no_longer_than_its_bound_behind_its_own_nodes_stalled_pass(
    tmp_path: Path, db: str
) -> None:
    deps = await build_deps(settings_for(tmp_path, db=db))
    holder = await pg_connect(db)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", lock_key(schema_of(db), "audit"))
        await holder.execute(
            "INSERT INTO audit_pending (at, action, source) VALUES (0, 'pending', 'test')"
        )
        # The store's idle pass has begun, and waits for the chain's lock.
        await asyncio.sleep(IDLE_SECONDS + GATHER_SECONDS + 0.5)
        started = time.monotonic()
        with pytest.raises(StoreError, match="audit chain's lock"):
            await asyncio.wait_for(deps.store.audit_rows(), READER_WAIT_SECONDS + 10)
        assert time.monotonic() - started < READER_WAIT_SECONDS + 5
    finally:
        await holder.close()
        await deps.store.close()
        deps.hasher.close()


# The users the load below resets, again and again.
TARGETS = [f"user{n}" for n in range(8)]


@contextlib.asynccontextmanager
async def under_load(cluster: Cluster, nodes: str) -> AsyncIterator[None]:
    """Within the block, an operator per letter of ``nodes`` (a node's name) resets the
    passwords of ``TARGETS`` without pause, all at once each time."""
    stop = asyncio.Event()

    async def keep_resetting(op: Any) -> None:
        while not stop.is_set():
            calls = [op.call("ResetPassword", {"UserName": t}) for t in TARGETS]
            await asyncio.gather(*calls, return_exceptions=True)

    ops = [await cluster.client(node, "op") for node in nodes]
    load = [asyncio.create_task(keep_resetting(op)) for op in ops]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), 30)


async def all_linked_and_intact(cluster: Cluster) -> list[str]:
    """Once the load has stopped: nothing is left pending and the chain verifies; its
    actions, oldest first."""
    conn = await pg_connect(cluster.db)
    try:
        await eventually(lambda: _none_pending(conn), timeout=10)
    finally:
        await conn.close()
    ok, actions = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok
    return actions


async def chain_holders(conn: Any, lock: int, *, waiting_on_client: bool = False) -> int:
    """How many sessions hold the chain's advisory ``lock`` (only those waiting on their
    client: a frozen or cut-off node's, say)."""
    held = (
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.classid::text::bigint = $1 AND l.objid::text::bigint = $2"
    )
    if waiting_on_client:
        held += " AND a.wait_event = 'ClientRead'"
    return int(await conn.fetchval(held, (lock >> 32) & 0xFFFFFFFF, lock & 0xFFFFFFFF))


async def chain_free(conn: Any, lock: int) -> bool:
    return await chain_holders(conn, lock) == 0


async def test_a_node_frozen_at_any_moment_of_its_linking_never_holds_the_chain(
    cluster: Cluster,
) -> None:
    operator = {"permissions": ["Operator"], "accounts": [1]}
    await cluster.users(*TARGETS, "op2", "lone", op2=operator)
    await cluster.start(reset_requests_per_user=100000)
    conn = await pg_connect(cluster.db)
    proc = cluster.nodes["a"].proc
    lock = lock_key(schema_of(cluster.db), "audit")
    async with under_load(cluster, "aaa"):
        try:
            await asyncio.sleep(0.5)
            # Node a is frozen (a VM paused, a process stopped) at moments spread over its
            # passes, which run every few milliseconds under this load: it is never found
            # holding the chain while the server waits on it (it would hold it for as long as
            # it stays frozen).
            for attempt in range(60):
                proc.send_signal(signal.SIGSTOP)
                await asyncio.sleep(0.05)  # what it had sent runs to its end meanwhile
                held = await chain_holders(conn, lock, waiting_on_client=True)
                assert held == 0, f"frozen at attempt {attempt} holding the audit chain"
                proc.send_signal(signal.SIGCONT)
                await asyncio.sleep(0.003 * (attempt % 7))
            # Frozen once more: decisions on node b go on and are linked at once.
            proc.send_signal(signal.SIGSTOP)
            b = await cluster.client("b", "op2")
            reset = b.call("ResetPassword", {"UserName": "lone"})
            assert (await asyncio.wait_for(reset, 10)).o == OK
            await eventually(lambda: _none_pending(conn), timeout=3)
        finally:
            proc.send_signal(signal.SIGCONT)
            await conn.close()
    ok, actions = await _verified(cluster.tmp, cluster.db, cluster.key)
    assert ok and "reset-requested" in actions


async def test_a_node_with_a_pool_of_one_answers_while_another_session_holds_the_chain(
    cluster: Cluster,
) -> None:
    await cluster.users("alice", "bob")
    env = {"OMS_AUTH_SECRET_KEY_FILE": str(cluster.key)}
    mail = f"maildir:{cluster.tmp / 'mail-a'}"
    node = ServerProcess(cluster.tmp, "--db", cluster.db + "&pool_max=1", "--mail", mail, env=env)
    cluster.nodes["a"] = node
    await node.start()
    op = await cluster.client("a", "op")
    holder = await pg_connect(cluster.db)
    try:
        await holder.execute(
            "SELECT pg_advisory_lock($1)", lock_key(schema_of(cluster.db), "audit")
        )
        for target in ("alice", "bob", "alice"):
            # Each wakes the node's linker, which must not sit on the one connection.
            reset = op.call("ResetPassword", {"UserName": target})
            assert (await asyncio.wait_for(reset, 10)).o == OK
            await asyncio.sleep(IDLE_SECONDS)
    finally:
        await holder.close()
    conn = await pg_connect(cluster.db)
    try:
        await eventually(lambda: _none_pending(conn), timeout=5)
    finally:
        await conn.close()
