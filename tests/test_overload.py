"""Overload: per-address connection limits, per-connection in-flight and rate limits, idle
timeout, keepalive, and a graceful shutdown that finishes what it accepted."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from oms_auth.app import App
from protocol.client import Client
from protocol.messages import Empty, PingReply

from .flood import MB, flood, many
from .helpers import Clock, ServerProcess, eventually, settings_for
from .test_deployment import private_ca


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


async def test_shutdown_finishes_requests_in_flight_then_closes_with_1012(
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
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    await c.close()


# -- what one peer may cost the node (docs/operations.md, "Overload and shutdown") --

RAISED_RATE = {"OMS_AUTH_MAX_REQUESTS_PER_SECOND": "1000000000"}


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ServerProcess]:
    """``oms-auth serve`` as its own process (its memory is measured), warmed up by one
    WebSocket Ping; ``request.param``: extra environment."""
    server = ServerProcess(tmp_path, env=getattr(request, "param", {}))
    await server.start()
    try:
        async with await Client.connect(server.url) as c:
            assert (await c.call("Ping")).o == {"msg": "PONG"}
        yield server
    finally:
        await server.kill()


def port_of(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


@pytest.mark.parametrize(
    ("served", "frames"),
    [({}, "pings"), (RAISED_RATE, "pings"), ({}, "requests")],
    ids=["pings past the rate", "pongs past the output bound", "answers past the output bound"],
    indirect=["served"],
)
async def test_a_client_that_never_reads_is_disconnected_and_the_node_stays_small(
    served: ServerProcess, frames: str
) -> None:
    """Pings (each answered by a pong) or requests sent for 8 s by a client that never reads:
    every such connection is closed, and the server grows by less than 50 MB."""
    result = await asyncio.to_thread(
        flood, port_of(served.url), served.proc.pid, frames, seconds=8
    )
    assert result.growth < 50 * MB, result
    assert result.closed >= 1, result


async def test_a_ping_flood_under_tls_is_closed_and_the_node_stays_small(
    tmp_path: Path,
) -> None:
    ca, cert, key = private_ca(tmp_path)
    server = ServerProcess(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    await server.start()
    trust = ssl.create_default_context(cafile=str(ca))
    try:
        for env_frames in ("pings", "requests"):
            result = await asyncio.to_thread(
                flood, port_of(server.url), server.proc.pid, env_frames, seconds=5, tls=trust
            )
            assert result.growth < 50 * MB, (env_frames, result)
            assert result.closed >= 1, (env_frames, result)
    finally:
        await server.kill()


@pytest.mark.parametrize("limited", [{"max_requests_per_second": 10}], indirect=True)
async def test_client_pings_count_toward_the_request_rate_and_past_it_close_the_connection(
    limited: App,
) -> None:
    async with await Client.connect(limited.url) as c:
        for _ in range(6):
            await (await c.ws.ping())
        answers = await asyncio.gather(*(c.call("Ping") for _ in range(10)))
        refused = [a for a in answers if a.o.get("errorcode") == 101]
        assert len(refused) >= 5  # the pings took their share of the second
    async with await Client.connect(limited.url) as c:
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(40):
                await (await c.ws.ping())
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason.startswith("Too many requests per second")


@pytest.mark.parametrize("limited", [{"max_requests_per_second": 10}], indirect=True)
async def test_each_fragment_of_a_message_takes_from_the_request_rate(limited: App) -> None:
    async with await Client.connect(limited.url) as c:
        # websockets sends each item as a fragment, then an empty last one: six in all, which
        # cost as much as six requests; six more are past the budget of ten.
        await c.ws.send(iter(['{"m":0,"i":1,', '"n":"Ping",', '"o":', '"{}"', "}"]))
        assert (await c.next_unmatched()).o == {"msg": "PONG"}
        answers = await asyncio.gather(*(c.call("Ping") for _ in range(6)))
        assert [a for a in answers if a.o.get("errorcode") == 101]
    async with await Client.connect(limited.url) as c:
        with pytest.raises(ConnectionClosed) as closed:
            await c.ws.send(iter(["{"] + [" "] * 40 + ["}"]))
            await c.next_unmatched()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_many_clients_sending_endless_fragments_keep_the_node_small(
    served: ServerProcess,
) -> None:
    """Each read of up to 256 KiB of empty fragments is tens of thousands of frames, all
    queued at once: twenty such clients took 60 MB before fragments had a budget."""
    growth = await asyncio.to_thread(many, port_of(served.url), served.proc.pid, "fragments", 20)
    assert growth < 25 * MB, growth / MB


async def test_a_ping_inside_a_fragmented_message_is_answered_and_the_message_still_counts(
    app: App,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    protocol = ClientProtocol(parse_uri(app.url))
    protocol.send_request(protocol.connect())
    writer.write(b"".join(protocol.data_to_send()))
    events: list[Any] = []

    async def read_until(done: Callable[[], bool]) -> None:
        while not done():
            data = await asyncio.wait_for(reader.read(4096), 10)
            assert data, f"closed; got {events}"
            protocol.receive_data(data)
            events.extend(protocol.events_received())

    try:
        await read_until(lambda: protocol.state is State.OPEN)
        protocol.send_text(b'{"m":0,"i":1,', fin=False)
        protocol.send_ping(b"between")
        protocol.send_continuation(b'"n":"Ping","o":"{}"}', fin=True)
        writer.write(b"".join(protocol.data_to_send()))
        await read_until(
            lambda: any(isinstance(e, Frame) and e.opcode is Opcode.TEXT for e in events)
        )
    finally:
        writer.close()
    frames = [e for e in events if isinstance(e, Frame)]
    assert [(f.opcode, bytes(f.data)) for f in frames if f.opcode is Opcode.PONG] == [
        (Opcode.PONG, b"between")
    ]
    (text,) = [f for f in frames if f.opcode is Opcode.TEXT]
    answer = orjson.loads(text.data)
    assert (answer["i"], orjson.loads(answer["o"])) == (1, {"msg": "PONG"})


# -- every TCP connection counts toward the caps (docs/operations.md, "Overload and shutdown")

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def slow_http(app: App, local: str, head: str = "", body_pending: bool = True) -> Stream:
    """A connection from ``local`` that sent a POST's head and holds its body back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port, local_addr=(local, 0))
    if body_pending:
        writer.write(
            f"POST /AP/Ping HTTP/1.1\r\nHost: x\r\n{head}Content-Length: 10\r\n\r\n".encode()
        )
    return reader, writer


async def answer_within(stream: Stream, seconds: float) -> bytes | None:
    """What the server sent before closing, or None when it is still holding on."""
    try:
        return await asyncio.wait_for(stream[0].read(), seconds)
    except TimeoutError:
        return None


def close_all(streams: list[Stream]) -> None:
    for _, writer in streams:
        writer.close()


def assert_refused_503(raw: bytes) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), raw
    assert b"\r\nconnection: close" in head.lower()
    answer = orjson.loads(body)
    assert (answer["result"], answer["errorcode"]) == (False, 101)
    assert "Too many connections" in answer["detail"]


CAPS = {"max_connections_per_source": 4, "max_connections": 20}


@pytest.mark.parametrize("limited", [CAPS], indirect=True)
async def test_slow_http_requests_count_toward_the_per_address_cap(limited: App) -> None:
    held = [await slow_http(limited, "127.0.0.3") for _ in range(30)]
    try:
        answers = await asyncio.gather(*(answer_within(s, 3) for s in held))
        refused = [a for a in answers if a is not None]
        assert len(refused) >= 26, f"{30 - len(refused)} held by one address"
        told = [raw for raw in refused if raw]  # the rest were closed at once
        assert len(told) >= 4
        for raw in told:
            assert_refused_503(raw)
        async with await Client.connect(limited.url, local_addr=("127.0.0.2", 0)) as c:
            assert (await c.call("Ping")).o == {"msg": "PONG"}
    finally:
        close_all(held)


@pytest.mark.parametrize("limited", [{"max_connections": 6}], indirect=True)
async def test_http_connections_count_toward_max_connections(limited: App) -> None:
    held = [await slow_http(limited, f"127.0.0.{10 + n}") for n in range(6)]
    try:
        other = await slow_http(limited, "127.0.0.30")
        raw = await answer_within(other, 5)
        close_all([other])
        assert raw is not None
        assert_refused_503(raw)
        ws = await Client.connect(limited.url, local_addr=("127.0.0.31", 0))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.call("Ping")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        await ws.close()
        close_all(held[:1])
        await asyncio.sleep(0.1)
        async with await Client.connect(limited.url, local_addr=("127.0.0.32", 0)) as c:
            assert (await c.call("Ping")).o == {"msg": "PONG"}
    finally:
        close_all(held)


@pytest.mark.parametrize("limited", [{**CAPS, "trusted_proxies": ["127.0.0.2"]}], indirect=True)
async def test_behind_a_proxy_the_cap_is_per_forwarded_client_not_per_proxy(
    limited: App,
) -> None:
    proxy = "127.0.0.2"
    many = [
        await slow_http(limited, proxy, f"X-Forwarded-For: 198.51.100.{n}\r\n") for n in range(8)
    ]
    same = [await slow_http(limited, proxy, "X-Forwarded-For: 198.51.100.99\r\n") for _ in range(8)]
    try:
        answers = await asyncio.gather(*(answer_within(s, 3) for s in many + same))
        assert answers[:8] == [None] * 8  # eight clients through one proxy: all held
        refused = [a for a in answers[8:] if a is not None]
        assert len(refused) >= 4, "one forwarded client held more than its cap"
        for raw in refused:
            assert_refused_503(raw)
    finally:
        close_all(many + same)


@pytest.mark.parametrize("limited", [CAPS], indirect=True)
async def test_one_address_cannot_hold_descriptors_past_twice_its_cap(limited: App) -> None:
    """Connections that send nothing: past the cap a few wait to be told (503 or 1013) once
    their request arrives; the rest are closed at once."""
    silent = [await slow_http(limited, "127.0.0.3", body_pending=False) for _ in range(40)]
    try:
        answers = await asyncio.gather(*(answer_within(s, 3) for s in silent))
        assert sum(a is None for a in answers) <= 8, "held open"
    finally:
        close_all(silent)
    # Every place is given back as its connection ends.
    admission = limited.admission
    await eventually(
        lambda: (admission.open, admission.by_source, admission.waiting) == (0, {}, {})
    )


@pytest.mark.parametrize("limited", [{"max_in_flight_bytes": 131072}], indirect=True)
async def test_the_bytes_of_requests_in_flight_are_bounded_per_node(limited: App) -> None:
    """Each connection's requests in flight are counted, but a count times a frame's size
    times connections is no memory bound: past the node's byte budget a request is refused
    at once (101, m=1), from any connection, until the requests holding it end."""
    release = add_slow(limited)
    pad = {"Pad": "x" * 30000}  # an unknown key: ignored by the function, held all the same
    clients = [await Client.connect(limited.url) for _ in range(3)]
    try:
        held = [asyncio.create_task(c.call("Slow", pad)) for c in clients for _ in range(2)]
        answers = await asyncio.gather(
            *(asyncio.wait_for(asyncio.shield(t), 1) for t in held), return_exceptions=True
        )
        refused = [a.o for a in answers if not isinstance(a, BaseException)]
        assert len(refused) == 2 and all(r["errorcode"] == 101 for r in refused), refused
        assert refused[0]["detail"].startswith("The server holds too many large requests")
        assert (await clients[0].call("Ping")).o == {"msg": "PONG"}  # small ones still pass
        release.set()
        done = [(await t).o for t in held if not t.done() or "msg" in (t.result().o or {})]
        assert done.count({"msg": "DONE"}) == 4
        assert limited.gateway.in_flight_bytes == 0
        assert (await clients[1].call("Slow", pad, timeout=2)).o == {"msg": "DONE"}
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_a_node_with_few_descriptors_lowers_its_cap_and_refuses_cleanly(
    tmp_path: Path,
) -> None:
    """Under a 300-descriptor limit a configured max_connections of 10,000 cannot hold: the
    node says so and caps itself within its descriptors (the default does the same, quietly),
    so a crowd from four addresses meets a clean 1013 past the cap instead of failed accepts,
    and the node serves after it."""
    import os
    import re
    import sys

    from websockets.asyncio.client import connect

    from .helpers import FAST

    log = (tmp_path / "stderr").open("w+")
    proc = await asyncio.create_subprocess_exec(
        *("prlimit", "--nofile=300:300", sys.executable, "-m", "oms_auth.cli", "serve"),
        *("--port", "0", "--db", str(tmp_path / "s.sqlite3"), "--mail", f"maildir:{tmp_path}/m"),
        cwd=tmp_path,
        env={**os.environ, **FAST, "OMS_AUTH_MAX_CONNECTIONS": "10000"},
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = re.search(r"listening on (ws://\S+)", line)
        assert url, line
        outcomes: list[str] = []
        held = []

        async def one(address: str) -> None:
            try:
                ws = await connect(url[1], local_addr=(address, 0), open_timeout=10)
                held.append(ws)
                await ws.send('{"m":0,"i":0,"n":"Ping","o":"{}"}')
                outcomes.append("ok" if "PONG" in str(await ws.recv()) else "?")
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
                outcomes.append("1013" if code == 1013 else f"closed {code}")

        await asyncio.gather(*(one(f"127.0.0.{n % 4 + 2}") for n in range(120)))
        assert len(outcomes) == 120 and set(outcomes) <= {"ok", "1013"}, outcomes
        assert 0 < outcomes.count("ok") <= (300 - 128) // 2
        log.seek(0)
        assert "max_connections lowered from 10000 to 86" in log.read()
        await asyncio.gather(*(ws.close() for ws in held))
        await asyncio.sleep(0.5)
        async with await Client.connect(url[1]) as c:
            assert (await c.call("Ping")).o == {"msg": "PONG"}
    finally:
        proc.terminate()
        await proc.wait()
        log.close()
