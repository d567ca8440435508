"""The stores under concurrency from several nodes, and the PostgreSQL store's own duties: its
URL, its schema versioning, its errors when the database is away, its recovery, and telling
other nodes about password changes (LISTEN/NOTIFY).

"Two nodes" here are two store objects on one database, each with its own connections, as two
processes would have; tests/test_nodes.py runs two real ``oms-auth serve`` processes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from oms_auth.app import App
from oms_auth.config import Settings
from oms_auth.crypto import audit_key
from oms_auth.store import (
    AuditEntry,
    Claim,
    MailItem,
    NewUser,
    Outcome,
    Store,
    StoreError,
    open_store,
)
from oms_auth.store.postgres import SCHEMA_VERSION, PostgresStore, parse_url
from oms_auth.store.postgres_pool import FairPool
from protocol.client import Client

from .helpers import (
    FAST,
    PASSWORD,
    PG_URL,
    Clock,
    eventually,
    make_user,
    schema_of,
    settings_for,
    sql,
    terminate_backends,
)
from .pg_relay import Relay
from .store_helpers import count_events, issue, login, redeem

NOW = 1_800_000_000.0
# The audit key every store a test opens here is given (the nodes of one exchange share it).
AUDIT_KEY = audit_key(bytes(range(32)))


def mail(user_id: int, kind: str = "reset") -> MailItem:
    return MailItem(kind=kind, recipient="u@example.test", user_id=user_id, public={"n": 1})


@pytest.fixture
async def nodes(db: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database: what two nodes share."""
    a = await open_store(db, audit_key=AUDIT_KEY)
    b = await open_store(db, audit_key=AUDIT_KEY)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def a_user(store: Store, name: str = "alice") -> int:
    return await store.create_user(
        NewUser(username=name, email=f"{name}@x.test", password_hash="h")
    )


# -- every rule holds when two nodes act at once (both stores) ---------------------------------


async def test_a_limit_counts_across_nodes_and_the_last_slot_goes_once(
    nodes: tuple[Store, Store], db: str
) -> None:
    a, b = nodes
    claim = [Claim("requests", "alice", 3600, 5)]
    takes = [(a, b)[n % 2].reserve(claim, NOW) for n in range(40)]
    taken = [t is not None for t in await asyncio.gather(*takes)]
    assert taken.count(True) == 5
    assert await count_events(db, "requests", "alice", NOW - 1) == 5
    assert await b.reserve(claim, NOW + 1) is None


async def test_failure_counts_from_two_nodes_are_one_sequence(nodes: tuple[Store, Store]) -> None:
    a, b = nodes
    claim = [Claim("f", "7", 3600, 1000)]
    counts = await asyncio.gather(*((a, b)[n % 2].reserve(claim, NOW) for n in range(20)))
    # each saw every earlier one: no two alike
    assert sorted(c[0] for c in counts if c is not None) == list(range(20))


async def test_of_concurrent_redemptions_on_two_nodes_exactly_one_wins(
    nodes: tuple[Store, Store],
) -> None:
    a, b = nodes
    uid = await a_user(a)
    await login(a, b"s" * 32, uid, NOW, 0)
    await issue(a, uid, b"c" * 32, NOW, NOW + 60, mail(uid))
    wins = await asyncio.gather(
        *(
            redeem((a, b)[n % 2], uid, b"c" * 32, f"h{n}", NOW, mail(uid, "changed"))
            for n in range(30)
        )
    )
    assert wins.count(Outcome.DONE) == 1
    winner = wins.index(Outcome.DONE)
    user = await b.user_by_id(uid)
    assert user is not None and user.password_hash == f"h{winner}"
    assert await a.session(b"s" * 32) is None
    assert (await b.mail_counts())["queued"] == 2  # the link and one "changed", not thirty


async def test_codes_issued_at_once_on_two_nodes_leave_one_pending(
    nodes: tuple[Store, Store], db: str
) -> None:
    a, b = nodes
    uid = await a_user(a)
    await asyncio.gather(
        *(
            issue((a, b)[n % 2], uid, bytes([n]) * 32, NOW + n, NOW + 60, mail(uid))
            for n in range(20)
        )
    )
    states = await sql(db, "SELECT state FROM reset_codes")
    assert sorted(s for (s,) in states) == ["pending"] + ["void"] * 19


async def test_each_queued_message_is_claimed_by_one_node(nodes: tuple[Store, Store]) -> None:
    a, b = nodes
    uid = await a_user(a)
    for n in range(30):
        await issue(a, uid, bytes([n]) * 32, NOW, NOW + 60, mail(uid))
    claimed: dict[str, list[int]] = {"a": [], "b": []}

    async def worker(name: str, store: Store) -> None:
        while rows := await store.claim_mail(NOW, 120, 4):
            claimed[name] += [r.id for r in rows]
            await asyncio.sleep(0)

    await asyncio.gather(worker("a", a), worker("b", b), worker("a", a), worker("b", b))
    every = claimed["a"] + claimed["b"]
    assert sorted(every) == sorted(set(every)) and len(every) == 30
    assert await a.claim_mail(NOW + 60, 120, 100) == []  # leased: not due again yet
    assert len(await b.claim_mail(NOW + 121, 120, 100)) == 30  # a lease that ran out is due


async def test_the_audit_chain_stays_one_line_when_nodes_write_at_once(
    nodes: tuple[Store, Store],
) -> None:
    a, b = nodes
    await asyncio.gather(
        *(
            (a, b)[n % 2].audit([AuditEntry(action=f"x{n}"), AuditEntry(action=f"y{n}")], NOW)
            for n in range(25)
        )
    )
    check = await b.verify_audit()
    assert check.ok and check.rows == 50


async def test_a_nul_in_a_username_is_an_ordinary_answer(app: App) -> None:
    # PostgreSQL text cannot hold NUL; a client may still send one.
    await make_user(app.deps, "alice")
    async with await Client.connect(app.url) as c:
        login = await c.call("AuthenticateUser", {"UserName": "ali\x00ce", "Password": "x"})
        assert login.o["errormsg"] == "Invalid username or password"
        reset = await c.call("ResetPassword", {"UserName": "ali\x00ce"})
        assert reset.o["result"] is True
        again = await c.call("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD})
        assert again.o["Authenticated"] is True
    assert (await app.deps.store.verify_audit()).ok


# -- the URL, the schema, the key -------------------------------------------------------------


def test_the_url_keeps_our_parameters_from_asyncpg() -> None:
    t = parse_url("postgresql://oms@db1:6543/auth?schema=exchange_a&pool_max=4&sslmode=disable")
    assert (t.schema, t.pool_min, t.pool_max, t.where) == ("exchange_a", 1, 4, "db1:6543")
    assert t.dsn == "postgresql://oms@db1:6543/auth?sslmode=disable"
    t = parse_url("postgres://oms:pw@db1/auth")
    assert (t.schema, t.pool_max, t.command_timeout, t.where) == ("public", 20, 30.0, "db1:5432")
    assert "pw" not in repr(t) and "pw" not in repr(
        PostgresStore("postgres://oms:pw@db1/auth", audit_key=AUDIT_KEY)
    )
    for bad in ("schema=Robert'); DROP", "schema=1abc", "pool_max=lots", "pool_min=5&pool_max=2"):
        with pytest.raises(StoreError, match="PostgreSQL URL"):
            parse_url(f"postgresql://db1/auth?{bad}")
    with pytest.raises(StoreError, match="the port of 'db1' is not a number") as bad_port:
        parse_url("postgresql://oms:pw@db1:http/auth")
    assert "pw" not in str(bad_port.value)


def test_the_key_file_of_a_database_server_store_is_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings(db="postgresql://db1/auth?schema=x").key_file() == tmp_path / "oms-auth.key"
    assert Settings(db="sqlite:data/a.db").key_file() == tmp_path / "data" / "a.db.key"
    assert Settings(db="data/a.db").key_file() == tmp_path / "data" / "a.db.key"


# What only the PostgreSQL store has: these run with ``db``'s postgres case alone.
pg_only = pytest.mark.parametrize("db", ["postgres"], indirect=True)


@pg_only
async def test_nodes_starting_at_once_create_the_schema_once(db: str) -> None:
    stores = await asyncio.gather(*(open_store(db, audit_key=AUDIT_KEY) for _ in range(4)))
    for store in stores:
        assert isinstance(store, PostgresStore)
        await store.close()
    version = await sql(db, "SELECT value FROM meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)]


@pg_only
async def test_a_schema_from_a_newer_oms_auth_is_refused(db: str) -> None:
    await (await open_store(db, audit_key=AUDIT_KEY)).close()
    await sql(db, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    newer = f"schema version 99; this oms-auth knows up to {SCHEMA_VERSION}"
    with pytest.raises(StoreError, match=newer):
        await open_store(db, audit_key=AUDIT_KEY)


@pg_only
def test_a_node_with_another_key_is_refused(tmp_path: Path, db: str) -> None:
    first = run_cli(tmp_path, "user", "list", "--db", db, env={"OMS_AUTH_SECRET_KEY": "11" * 32})
    assert first.returncode == 0, first.stderr
    other = run_cli(tmp_path, "user", "list", "--db", db, env={"OMS_AUTH_SECRET_KEY": "22" * 32})
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "secret key differs from the one PostgreSQL schema" in other.stderr


# -- the database away at start, and while running --------------------------------------------


def run_cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "oms_auth.cli", *args],
        cwd=cwd,
        env={**os.environ, **FAST, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_port(url: str, port: int, path: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username + '@' if parts.username else ''}{parts.hostname}:{port}"
    return urlunsplit((parts.scheme, netloc, path or parts.path, parts.query, ""))


def test_serve_exits_with_a_message_when_postgresql_is_unreachable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = with_port(PG_URL, port)
    out = run_cli(tmp_path, "serve", "--port", "0", "--db", url)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"oms-auth: cannot reach PostgreSQL at 127.0.0.1:{port}: ")
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
    listed = run_cli(tmp_path, "user", "list", "--db", url)
    assert listed.returncode == 2 and "cannot reach PostgreSQL" in listed.stderr


def test_a_missing_database_is_named(tmp_path: Path) -> None:
    url = with_port(PG_URL, urlsplit(PG_URL).port or 5432, "/no_such_database_here")
    out = run_cli(tmp_path, "serve", "--port", "0", "--db", url)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert 'the server refused: database "no_such_database_here" does not exist' in out.stderr


async def health(app: App) -> int:
    def get() -> int:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status
        finally:
            conn.close()

    return await asyncio.to_thread(get)


@pg_only
async def test_while_the_database_is_away_answers_are_102_then_service_recovers(
    tmp_path: Path, db: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    relay = Relay()
    await relay.start()
    url = with_port(PG_URL, relay.port) + f"?schema={schema_of(db)}"
    app = App(settings_for(tmp_path, db=url), clock=clock, login_delay=0)
    await app.start()
    store = app.deps.store
    assert isinstance(store, PostgresStore)
    store.listener.retry = (0.1, 0.5)
    try:
        await make_user(app.deps, "alice")
        login = {"UserName": "alice", "Password": PASSWORD}
        async with await Client.connect(app.url) as c:
            assert (await c.call("AuthenticateUser", login)).o["Authenticated"] is True
            assert await health(app) == 200

            await relay.cut()
            caplog.set_level(logging.ERROR, "oms_auth.server")
            down = await c.call("AuthenticateUser", login)
            assert down.o["errorcode"] == 102
            ref = re.fullmatch(r"Internal error; reference (\w+)", down.o["detail"])
            assert ref, down.o
            assert f"ref={ref[1]}" in caplog.text  # the id support looks up, beside the trace
            assert await health(app) == 503
            assert not store.listener.listening

            await relay.start()  # the database is back, on the same address
            assert (await c.call("AuthenticateUser", login)).o["Authenticated"] is True
            assert await health(app) == 200
            await eventually(lambda: store.listener.listening)
    finally:
        await app.stop()
        await relay.close()


@pg_only
async def test_connections_the_server_cuts_are_replaced(app: App, db: str) -> None:
    store = app.deps.store
    assert isinstance(store, PostgresStore)
    await make_user(app.deps, "alice")
    login = {"UserName": "alice", "Password": PASSWORD}
    async with await Client.connect(app.url) as c:
        assert (await c.call("AuthenticateUser", login)).o["Authenticated"] is True
        assert await terminate_backends(db) >= 2  # at least one pooled, and the listener
        assert not store.listener.listening
        for _ in range(3):
            assert (await c.call("AuthenticateUser", login)).o["Authenticated"] is True
        await eventually(lambda: store.listener.listening)
        assert await health(app) == 200


# -- telling the other nodes (LISTEN/NOTIFY) ---------------------------------------------------


async def reset(store: Store, uid: int, code: bytes) -> None:
    await issue(store, uid, code, time.time(), time.time() + 60, mail(uid))
    done = await redeem(store, uid, code, "h", time.time(), mail(uid, "changed"))
    assert done is Outcome.DONE


@pg_only
async def test_a_reset_on_one_node_is_told_to_the_others_not_to_itself(
    nodes: tuple[Store, Store],
) -> None:
    a, b = nodes
    told_a: list[int] = []
    told_b: list[int] = []
    await a.listen_revocations(lambda r: told_a.append(r.user_id))
    await b.listen_revocations(lambda r: told_b.append(r.user_id))
    uid = await a_user(a)
    started = time.monotonic()
    await reset(a, uid, b"1" * 32)
    await eventually(lambda: told_b == [uid], timeout=1)
    assert time.monotonic() - started < 1
    await asyncio.sleep(0.2)
    assert told_a == [] and told_b == [uid]  # a handled its own (Events.sessions_ended)


@pg_only
async def test_a_cut_listener_reconnects_and_catches_up(
    nodes: tuple[Store, Store], db: str
) -> None:
    a, b = nodes
    assert isinstance(b, PostgresStore)
    told: list[int] = []
    await b.listen_revocations(lambda r: told.append(r.user_id))
    uid, other = await a_user(a), await a_user(a, "bob")
    b.listener.retry = (1.0, 1.0)  # long enough for a reset to commit while b is not listening
    assert b.listener.conn is not None
    pid = b.listener.conn.get_server_pid()
    await sql(db, "SELECT pg_terminate_backend(?)", pid)
    await eventually(lambda: not b.listener.listening)
    await reset(a, uid, b"1" * 32)  # its NOTIFY reaches nobody on b's side
    await eventually(lambda: told == [uid], timeout=5)  # caught up after the reconnect
    assert b.listener.listening
    await reset(a, other, b"2" * 32)  # and live notifications flow again
    await eventually(lambda: told == [uid, other], timeout=2)


# -- round trips (docs/performance.md, "A reset's round trips...") ------------------------------


@pg_only
async def test_an_operators_reset_code_is_issued_in_one_round_trip_its_mail_marked_in_one(
    db: str,
) -> None:
    """BEGIN with the row locks, the caller's authority and the limit's lock; the limit's slot,
    the writes, the audit row and COMMIT (postgres_batch.Prepared.transact). Each answer is
    still the one its rules give: issued while the limit has room, refused once it has none
    (the failed query, then its ROLLBACK; the connection's prepared statements still known, so
    the next issue on it is one trip that prepares nothing), CallerGone once the session ends."""
    from oms_auth.store import Authority, CallerGone, CodeIssue

    store = await open_store(db + ("&" if "?" in db else "?") + "pool_max=1", audit_key=AUDIT_KEY)
    trips: list[str] = []
    try:
        operator, target = await a_user(store, "operator"), await a_user(store, "target")
        assert await login(store, b"s" * 32, operator, NOW, 0) is Outcome.DONE
        # Only the issue's own trips: the audit linker, which shares the one connection, waits.
        store._linker.wake = lambda: None  # type: ignore[attr-defined]
        async with store._db.acquire() as conn:  # type: ignore[attr-defined]
            conn.add_query_logger(lambda q: trips.append(q.query))
        authority = Authority(user_id=operator, session=b"s" * 32, password_version=0)

        async def issue_as_operator(n: int, key: str = "target") -> bool:
            await asyncio.sleep(0)  # what came before is logged first
            trips.clear()
            issued = await store.issue_code(
                CodeIssue(
                    user_id=target,
                    digest=bytes([n]) * 32,
                    now=NOW + n,
                    expires_at=NOW + 600,
                    mail=mail(target),
                    audit=[AuditEntry(action="reset-requested", actor_id=operator)],
                    limit=Claim("requests", key, 3600, 2),
                    authority=authority,
                )
            )
            await asyncio.sleep(0)  # asyncpg calls a query logger soon after, not at once
            return issued

        assert await issue_as_operator(1) and len(trips) == 1, trips
        assert await issue_as_operator(2) and len(trips) == 1, trips
        assert not await issue_as_operator(3) and len(trips) == 2, trips  # the limit is spent
        assert trips[1] == "ROLLBACK", trips
        assert await issue_as_operator(4, "other") and len(trips) == 1, trips
        assert "PREPARE" not in trips[0], trips
        await store.revoke_session(b"s" * 32, operator, "logout")
        with pytest.raises(CallerGone):
            await issue_as_operator(5)
        await asyncio.sleep(0)
        assert len(trips) == 2, trips  # the failed trip, and its ROLLBACK
        # The outbox's per-batch trips: its claim; the mail marked sent with its audit rows.
        claimed = await store.claim_mail(NOW + 10, 60, 10)
        assert [m.user_id for m in claimed] == [target, target, target]
        await asyncio.sleep(0)
        trips.clear()
        sent = [AuditEntry(action="reset-emailed", target_id=target)] * 3
        await store.mails_delivered([m.id for m in claimed], NOW + 11, sent)
        await asyncio.sleep(0)
        # (asyncpg looks up the array's type the first time a connection meets it: not counted)
        ours = [t for t in trips if "'jit'" not in t and "typeinfo_tree" not in t]
        assert len(ours) == 1, ours
        assert (await store.mail_counts())["sent"] == 3
        rows = await store.audit_rows(limit=None)
        assert [r.target_id for r in rows if r.action == "reset-emailed"] == [target] * 3
    finally:
        await store.close()
    assert await count_events(db, "requests", "target", NOW) == 2
    assert await count_events(db, "requests", "other", NOW) == 1
    codes = await sql(db, "SELECT state FROM reset_codes ORDER BY created_at")
    assert [s for (s,) in codes] == ["void", "void", "pending"]


@pg_only
async def test_statements_prepared_by_name_outlive_a_failed_query_and_a_cut_connection(
    db: str,
) -> None:
    """A query that fails after some of its PREPAREs, and a connection replaced after the
    server cut it: the next issue on that pool still prepares what it runs, and runs."""
    import asyncpg

    store = await open_store(db + ("&" if "?" in db else "?") + "pool_max=1", audit_key=AUDIT_KEY)
    try:
        uid = await a_user(store)
        other = await open_store(db, audit_key=AUDIT_KEY)
        try:
            assert await issue(other, uid, b"a" * 32, NOW, NOW + 60, mail(uid))
        finally:
            await other.close()
        with pytest.raises(asyncpg.UniqueViolationError):  # the same code: its insert fails
            await issue(store, uid, b"a" * 32, NOW + 1, NOW + 60, mail(uid))
        assert await issue(store, uid, b"b" * 32, NOW + 2, NOW + 60, mail(uid))
        assert await terminate_backends(db) >= 1
        for n in range(3):  # the cut connection may fail the first call; a new one serves
            try:
                assert await issue(store, uid, bytes([n]) * 32, NOW + 3 + n, NOW + 60, mail(uid))
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
                assert n == 0
    finally:
        await store.close()
    states = await sql(db, "SELECT state FROM reset_codes ORDER BY created_at")
    assert [s for (s,) in states][-1] == "pending"
    assert len(states) in (4, 5)


# -- the pool (docs/performance.md, "A fair turn at the pool") ----------------------------------


async def fair_pool(size: int, *, min_size: int | None = None, **options: Any) -> FairPool:
    """The store's pool over a new asyncpg pool of ``size`` connections to the test database
    (all opened at once unless ``min_size`` says fewer)."""
    import asyncpg

    raw = await asyncpg.create_pool(
        PG_URL, min_size=size if min_size is None else min_size, max_size=size, **options
    )
    return FairPool(raw, size)


async def test_pooled_connections_go_to_tasks_in_the_order_they_asked() -> None:
    """asyncpg's own queue lets a task that asks while a woken waiter is on its way take the
    connection, and the waiter goes to the back again; the store's pool serves in order. Twelve
    tasks asking ten times each over two connections: a task may be overtaken by at most one
    that asked after it (the other connection's holder, admitted at the same time)."""
    import itertools

    pool = await fair_pool(2)
    try:
        for _ in range(5):  # asyncpg's queue alone passes one round in four
            asked, granted = itertools.count(), list[int]()

            async def user(asked: Iterator[int], granted: list[int]) -> None:
                for _ in range(10):
                    ticket = next(asked)
                    async with pool.acquire() as conn:
                        granted.append(ticket)
                        await conn.fetchval("SELECT 1")
                    await asyncio.sleep(0)

            await asyncio.gather(*(user(asked, granted) for _ in range(12)))
            overtaken = [sum(t > g for t in granted[:i]) for i, g in enumerate(granted)]
            assert max(overtaken) <= 1, f"a task waited while {max(overtaken)} later ones went"
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_a_task_that_stops_waiting_for_a_connection_leaves_its_turn_to_the_next() -> None:
    pool = await fair_pool(1)
    try:
        holding, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with pool.acquire():
                holding.set()
                await release.wait()

        async def asker() -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("SELECT 1"))

        held = asyncio.create_task(holder())
        await holding.wait()
        gone, next_one = asyncio.create_task(asker()), asyncio.create_task(asker())
        await asyncio.sleep(0.05)
        gone.cancel()
        release.set()
        assert await asyncio.wait_for(next_one, 5) == 1
        await held
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_a_connection_whose_query_was_cancelled_is_replaced_and_no_more_are_opened() -> None:
    """A cancelled query leaves its connection to asyncpg's cleanup; the next task gets one that
    answers, and the pool never has more connections than its size."""
    import uuid

    name = f"pool-test {uuid.uuid4().hex[:12]}"
    pool = await fair_pool(2, min_size=0, server_settings={"application_name": name})
    try:

        async def slow() -> None:
            async with pool.acquire() as conn:
                await conn.execute("SELECT pg_sleep(10)")

        async def quick() -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("SELECT 1"))

        for _ in range(3):
            sleepers = [asyncio.create_task(slow()) for _ in range(3)]
            await asyncio.sleep(0.2)
            for task in sleepers:
                task.cancel()
            answers = await asyncio.wait_for(asyncio.gather(*(quick() for _ in range(8))), 10)
            assert answers == [1] * 8
            await asyncio.gather(*sleepers, return_exceptions=True)
        opened = await sql(
            PG_URL, "SELECT count(*) FROM pg_stat_activity WHERE application_name = ?", name
        )
        assert opened[0][0] <= 2
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_closing_the_pool_refuses_those_waiting_and_waits_for_those_in_use() -> None:
    import asyncpg

    pool = await fair_pool(1)
    holding, release = asyncio.Event(), asyncio.Event()

    async def holder() -> int:
        async with pool.acquire() as conn:
            holding.set()
            await release.wait()
            return int(await conn.fetchval("SELECT 2"))

    async def asker() -> None:
        async with pool.acquire():
            pass

    held = asyncio.create_task(holder())
    await holding.wait()
    waiting = asyncio.create_task(asker())
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(pool.close())
    with pytest.raises(asyncpg.InterfaceError):
        await asyncio.wait_for(waiting, 5)
    assert not closing.done()  # a connection is still in use
    release.set()
    assert await held == 2
    await asyncio.wait_for(closing, 10)
    with pytest.raises(asyncpg.InterfaceError):
        await asker()


async def test_a_waiter_cancelled_after_being_handed_a_connection_while_closing_gives_it_back() -> (
    None
):
    """A task ends its block, handing its connection to the task waiting, and closes the pool
    at once; the waiting task is cancelled before it runs (its timeout). The connection goes
    back to asyncpg's pool, which close() waits for, not to the closing pool's idle list,
    where close() would wait for it forever."""
    pool = await fair_pool(1)

    async def asker() -> None:
        async with pool.acquire():
            pass

    held = pool.acquire()
    await held.__aenter__()
    waiting = asyncio.create_task(asker())
    await asyncio.sleep(0.05)
    await held.__aexit__(None, None, None)  # handed on to the waiting task, not yet run
    waiting.cancel()
    async with asyncio.timeout(5):
        await pool.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not pool._idle and pool._taken == 0


async def test_closing_the_pool_closes_every_connection_even_when_giving_one_back_fails() -> None:
    """Giving an idle connection back to asyncpg's pool may fail (its reset finds the server
    gone, or the protocol in a state it cannot leave): asyncpg then terminates that connection
    and raises. close() still gives back the others and closes asyncpg's pool."""
    import uuid

    import asyncpg

    name = f"pool-test {uuid.uuid4().hex[:12]}"
    resets = 0

    async def failing_reset(conn: object) -> None:
        nonlocal resets
        resets += 1
        if resets == 1:
            raise OSError("the server went away")

    raw = await asyncpg.create_pool(
        PG_URL,
        min_size=0,
        max_size=3,
        server_settings={"application_name": name},
        reset=failing_reset,
    )
    pool = FairPool(raw, 3)
    started = asyncio.Event()

    async def user() -> None:
        async with pool.acquire() as conn:
            await started.wait()
            await conn.fetchval("SELECT 1")

    users = [asyncio.create_task(user()) for _ in range(3)]
    await asyncio.sleep(0.2)
    started.set()
    await asyncio.gather(*users)
    assert len(pool._idle) == 3
    await asyncio.wait_for(pool.close(), 10)
    assert raw._closed and not pool._idle and pool._taken == 0  # type: ignore[attr-defined]
    for _ in range(50):  # the server notices a terminated connection's socket closing
        left = await sql(
            PG_URL, "SELECT count(*) FROM pg_stat_activity WHERE application_name = ?", name
        )
        if left[0][0] == 0:
            break
        await asyncio.sleep(0.05)
    assert left[0][0] == 0


async def test_a_task_asking_while_the_pool_closes_is_refused_not_left_waiting() -> None:
    """A task that finds an idle connection cut gives it back to asyncpg's pool, which takes a
    moment; if the pool starts closing meanwhile and every slot is taken, the task is refused
    like those waiting, not put in a line that nobody serves any more."""
    import uuid

    import asyncpg

    name = f"pool-test {uuid.uuid4().hex[:12]}"
    raw = await asyncpg.create_pool(
        PG_URL, min_size=0, max_size=2, server_settings={"application_name": name}
    )

    class SlowRelease:  # asyncpg's pool, taking its time to take a connection back
        acquire, close = raw.acquire, raw.close

        async def release(self, conn: object) -> None:
            await asyncio.sleep(0.2)
            await raw.release(conn)  # type: ignore[arg-type]

    pool = FairPool(SlowRelease(), 2)  # type: ignore[arg-type]
    holding, done = asyncio.Event(), asyncio.Event()

    async def holder(cut: bool) -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            if not cut:
                holding.set()
                await done.wait()

    first = asyncio.create_task(holder(False))
    await holding.wait()
    await holder(True)
    done.set()
    await first  # two idle connections
    holding.clear()
    done.clear()
    held = asyncio.create_task(holder(False))  # takes one of them
    await holding.wait()
    (cut,) = pool._idle
    await sql(PG_URL, "SELECT pg_terminate_backend(?)", cut.get_server_pid())
    await asyncio.sleep(0.3)  # asyncpg reads the connection's end and takes it back
    asker = asyncio.create_task(holder(True))  # finds it cut, gives it back slowly
    await asyncio.sleep(0.05)
    other = asyncio.create_task(holder(False))  # takes the slot freed meanwhile
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0.3)  # the asker is done giving the cut one back
    done.set()
    await asyncio.wait_for(closing, 10)
    await held
    await other
    with pytest.raises(asyncpg.InterfaceError):
        await asyncio.wait_for(asker, 5)
