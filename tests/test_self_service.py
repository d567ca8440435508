"""docs/rules.md, "Work a request leaves behind": the work self-service ResetPassword leaves behind
is bounded (a capped queue, dropped requests counted, throttled requests counted rather than
audited), end to end through a real socket and store."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from oms_auth.app import App

from .helpers import Clock, is_postgres, make_user, pg_connect, settings_for, wait_for_mail

OK = {"result": True, "errormsg": None, "errorcode": 0, "detail": None}
# What the self-service worker did with a request it took from the queue.
PROCESSED = ("resets_requested", "resets_refused", "resets_throttled")


async def start(tmp_path: Path, clock: Clock, db: str, **overrides: Any) -> App:
    app = App(settings_for(tmp_path, db=db, **overrides), clock=clock, login_delay=0)
    await app.start()
    return app


@contextlib.asynccontextmanager
async def store_writes_held(db: str, table: str = "events") -> AsyncIterator[None]:
    """Hold the store's writes from outside, the way a busy database would: SQLite's write
    lock, or on PostgreSQL writes to ``table`` (every self-service request writes events
    first); reads go on."""
    if is_postgres(db):
        conn = await pg_connect(db)
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            await tx.rollback()
            await conn.close()
        return
    import aiosqlite

    async with aiosqlite.connect(db, isolation_level=None) as conn:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            await conn.execute("ROLLBACK")


def frame(i: int, username: str) -> str:
    o = json.dumps(json.dumps({"UserName": username}, separators=(",", ":")))
    return '{"m":0,"i":%d,"n":"ResetPassword","o":%s}' % (i, o)


async def burst(app: App, names: list[str], connections: int) -> list[str]:
    """Send every request at once, spread over ``connections`` unauthenticated connections,
    and return every raw answer frame."""

    async def one(lane: list[str]) -> list[str]:
        async with connect(app.url, max_size=None) as ws:
            for k, name in enumerate(lane):
                await ws.send(frame(2 * k, name))
            return [str(await asyncio.wait_for(ws.recv(), 30)) for _ in lane]

    lanes = [names[k::connections] for k in range(connections)]
    answers = await asyncio.gather(*(one(lane) for lane in lanes))
    return [a for lane in answers for a in lane]


def metrics_text(app: App) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def metric(text: str, name: str) -> int:
    match = re.search(rf"^oms_auth_{name} (\d+)$", text, re.MULTILINE)
    return int(match[1]) if match else 0


def processed(app: App) -> int:
    return sum(app.metrics.events[name] for name in PROCESSED)


def self_service_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "self-service-reset"]


def assert_all_success(answers: list[str]) -> None:
    """Every answer is the same success frame, byte for byte apart from its own ``i``."""
    shapes = {re.sub(r'"i":\d+', '"i":_', a) for a in answers}
    assert len(shapes) == 1, shapes
    doc = json.loads(answers[0])
    assert doc["m"] == 1 and doc["n"] == "ResetPassword" and json.loads(doc["o"]) == OK


async def test_past_the_queue_cap_requests_are_answered_alike_dropped_and_counted(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    cap, workers, sent = 5, 1, 40
    app = await start(tmp_path, clock, db, self_service_queue=cap, self_service_workers=workers)
    try:
        await make_user(app.deps, "trader")
        names = ["trader" if k % 5 == 0 else f"nobody-{k}" for k in range(sent)]
        async with store_writes_held(db):
            # The worker is stuck on its first store write: the queue fills, the rest drop.
            answers = await burst(app, names, connections=4)
        assert len(answers) == sent
        assert_all_success(answers)
        await app.resets.drain()
        text = await asyncio.to_thread(metrics_text, app)
        dropped = metric(text, "self_service_dropped")
        assert dropped == app.metrics.events["self_service_dropped"]
        assert cap <= processed(app) <= cap + workers
        assert dropped + processed(app) == sent
        # A drop is silent: it leaves no audit row (only the processed decisions are there).
        rows = await app.deps.store.audit_rows(limit=None)
        decisions = [r for r in rows if r.action in ("reset-refused", "reset-requested")]
        events = app.metrics.events
        assert len(decisions) == events["resets_requested"] + events["resets_refused"]
    finally:
        await app.stop()


@pytest.mark.parametrize(
    ("limits", "user"),
    [
        (dict(reset_requests_per_source=3), None),  # many usernames from one address
        (dict(reset_requests_per_user=3), "trader"),  # one username, many times
    ],
    ids=["per-source", "per-user"],
)
async def test_throttled_requests_are_counted_not_audited_one_by_one(
    tmp_path: Path, clock: Clock, db: str, limits: dict[str, int], user: str | None
) -> None:
    sent = 40
    app = await start(tmp_path, clock, db, **limits)
    try:
        await make_user(app.deps, "trader")
        names = [user or f"nobody-{k}" for k in range(sent)]
        answers = await burst(app, names, connections=4)
        assert_all_success(answers)
        await app.resets.drain()
        rows = await app.deps.store.audit_rows(limit=None)
        decisions = [r for r in rows if r.action in ("reset-refused", "reset-requested")]
        assert len(decisions) == 3
        assert not any("too many" in (r.detail or "") for r in rows)
        assert app.metrics.events["resets_throttled"] == sent - 3
        assert app.metrics.events["self_service_dropped"] == 0
        text = await asyncio.to_thread(metrics_text, app)
        assert metric(text, "resets_throttled") == sent - 3
        if user:
            await wait_for_mail(tmp_path / "mail", 3)
    finally:
        await app.stop()


async def test_throttled_authenticated_requests_are_still_audited(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    from protocol.client import Client

    from .helpers import PASSWORD

    app = await start(tmp_path, clock, db)
    try:
        await make_user(app.deps, "op", permissions=["Operator"])
        await make_user(app.deps, "trader")
        async with await Client.connect(app.url) as c:
            await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
            for _ in range(4):
                await c.call("ResetPassword", {"UserName": "trader"})
        rows = await app.deps.store.audit_rows(limit=None)
        assert [r.detail for r in rows if r.action == "reset-refused"] == ["too many requests"]
        assert app.metrics.events["resets_throttled"] == 0
    finally:
        await app.stop()


async def test_drain_finishes_queued_work_and_leaves_no_task(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    app = await start(tmp_path, clock, db, self_service_queue=50, self_service_workers=2)
    try:
        await make_user(app.deps, "trader")
        async with store_writes_held(db):
            answers = await burst(app, [f"nobody-{k}" for k in range(20)], connections=2)
            assert processed(app) == 0 and self_service_tasks()
        assert_all_success(answers)
        await app.resets.drain()
        assert processed(app) == 20
        assert not self_service_tasks()
        # After a drain, new requests start workers again.
        async with store_writes_held(db):
            assert_all_success(await burst(app, ["trader", "nobody"], connections=1))
        # Shutdown with work still queued: it is finished, and nothing is left running.
        await app.stop()
        assert app.metrics.events["resets_requested"] == 1
        assert processed(app) == 22
        assert not self_service_tasks()
    finally:
        await app.stop()
