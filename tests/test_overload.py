"""Overload: per-address connection limits, per-connection in-flight and rate limits, idle
timeout, keepalive, and a graceful shutdown that finishes what it accepted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from oms_auth.app import App
from protocol.client import Client
from protocol.messages import Empty, PingReply

from .helpers import Clock, settings_for


@pytest.fixture
async def limited(
    tmp_path: Path, clock: Clock, db: str, request: pytest.FixtureRequest
) -> AsyncIterator[App]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    app = App(settings_for(tmp_path, db=db, **overrides), clock=clock, login_delay=0)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def add_slow(app: App) -> asyncio.Event:
    release = asyncio.Event()

    async def slow(conn: object, req: Empty) -> PingReply:
        await release.wait()
        return PingReply(msg="DONE")

    app.functions.add("Slow", Empty, slow)
    return release


@pytest.mark.parametrize("limited", [{"max_connections_per_source": 3}], indirect=True)
async def test_connections_past_the_per_address_limit_are_closed_with_1013(limited: App) -> None:
    clients = [await Client.connect(limited.url) for _ in range(3)]
    extra = await Client.connect(limited.url)
    with pytest.raises(ConnectionClosed) as closed:
        await extra.call("Ping")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert "too many connections" in closed.value.rcvd.reason
    await clients.pop().close()
    await asyncio.sleep(0.05)
    again = await Client.connect(limited.url)
    assert (await again.call("Ping")).o == {"msg": "PONG"}
    for c in [*clients, again, extra]:
        await c.close()


@pytest.mark.parametrize("limited", [{"max_in_flight_per_connection": 2}], indirect=True)
async def test_requests_past_the_in_flight_limit_are_refused_at_once(limited: App) -> None:
    release = add_slow(limited)
    async with await Client.connect(limited.url) as c:
        slow = [asyncio.create_task(c.call("Slow")) for _ in range(2)]
        await asyncio.sleep(0.05)
        refused = await c.call("Slow", timeout=2)
        assert refused.m == 1 and refused.o["errorcode"] == 101
        assert refused.o["detail"].startswith("Too many requests in flight on this connection")
        release.set()
        assert [(await t).o for t in slow] == [{"msg": "DONE"}] * 2
        assert (await c.call("Ping")).o == {"msg": "PONG"}


@pytest.mark.parametrize("limited", [{"max_requests_per_second": 10}], indirect=True)
async def test_requests_past_the_rate_limit_are_refused_and_the_bucket_refills(
    limited: App,
) -> None:
    async with await Client.connect(limited.url) as c:
        answers = await asyncio.gather(*(c.call("Ping") for _ in range(30)))
        refused = [a for a in answers if a.o.get("errorcode") == 101]
        assert 15 <= len(refused) <= 20
        assert (
            refused[0].o["detail"] == "Too many requests per second on this connection (limit 10)"
        )
        await asyncio.sleep(0.5)
        assert (await c.call("Ping")).o == {"msg": "PONG"}


@pytest.mark.parametrize("limited", [{"idle_timeout_seconds": 0.3}], indirect=True)
async def test_an_idle_connection_is_closed(limited: App) -> None:
    async with await Client.connect(limited.url) as c:
        assert (await c.call("Ping")).o == {"msg": "PONG"}
        with pytest.raises(ConnectionClosed) as closed:
            await c.next_unmatched(timeout=3)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "idle timeout")


@pytest.mark.parametrize("limited", [{"ping_interval_seconds": 0.1}], indirect=True)
async def test_the_server_sends_keepalive_pings(limited: App) -> None:
    async with await Client.connect(limited.url) as c:
        await c.call("Ping")
        (conn,) = limited.gateway.connections
        before = conn.ws.latency
        await asyncio.sleep(0.4)
        assert conn.ws.ping_interval == 0.1
        assert conn.ws.latency != before  # a ping went out and its pong came back


async def test_shutdown_finishes_requests_in_flight_then_closes_with_1001(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    app = App(settings_for(tmp_path, db=db), clock=clock, login_delay=0)
    await app.start()
    release = add_slow(app)
    url = app.url
    c = await Client.connect(url)
    slow = asyncio.create_task(c.call("Slow"))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(app.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()
    with pytest.raises(OSError):  # no longer listening
        await Client.connect(url, open_timeout=1)
    release.set()
    assert (await slow).o == {"msg": "DONE"}
    await stopping
    with pytest.raises(ConnectionClosed) as closed:
        await c.next_unmatched(timeout=3)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    await c.close()
