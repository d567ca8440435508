"""docs/protocol.md, "The HTTP gateway: /AP/": HTTP/1.1 kept alive on the port. One connection
carries any number of
requests, answered in order (pipelined ones too); it closes only after an answer that says
``Connection: close``, or once it has waited ``http_idle_seconds`` for a request; it still
counts toward the connection caps. Answers are read with h11, as a client would."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import h11
import orjson
import pytest
import requests
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from oms_auth.app import App
from oms_auth.conformance.cases.keepalive import HttpPeer
from oms_auth.engine.deps import Clock
from protocol.client import Client
from protocol.messages import Empty, PingReply

from .helpers import PASSWORD, make_user, settings_for

FAST = {"max_requests_per_second": 100000}


class Peer(HttpPeer):
    """One client connection that reads answers with h11 (the conformance kit's)."""

    @classmethod
    async def open(cls, app: App, local: str = "127.0.0.1") -> Peer:
        opened = await asyncio.open_connection("127.0.0.1", app.port, local_addr=(local, 0))
        return cls(*opened, "x")

    @staticmethod
    def request(method: str, target: str, body: bytes = b"", **headers: str) -> bytes:
        """The bytes of one request, written by h11 (one connection per request: h11 itself
        sends one at a time, and these are pipelined)."""
        writer = h11.Connection(h11.CLIENT)
        fields = [("Host", "x"), *headers.items()]
        if method == "POST":
            fields.append(("Content-Length", str(len(body))))
        out = writer.send(h11.Request(method=method, target=target, headers=fields)) or b""
        if body:
            out += writer.send(h11.Data(data=body)) or b""
        return out + (writer.send(h11.EndOfMessage()) or b"")


def header(head: h11.Response, name: str) -> str | None:
    values = [v.decode() for k, v in head.headers if k == name.lower().encode()]
    return ", ".join(values) if values else None


def unknown(n: int) -> str:
    return f"/AP/NoSuchFunction{n}"


@pytest.mark.parametrize("limited", [FAST], indirect=True)
async def test_a_thousand_requests_on_one_connection_are_answered_in_order(limited: App) -> None:
    """Pipelined in batches of 100: a Ping and an unknown function (whose refusal names it) in
    turn, so an answer out of order shows."""
    peer = await Peer.open(limited)
    try:
        for batch in range(10):
            numbers = range(batch * 100, batch * 100 + 100)
            targets = ["/AP/Ping" if n % 2 else unknown(n) for n in numbers]
            peer.writer.write(b"".join(peer.request("GET", t) for t in targets))
            for n in numbers:
                head, body = await peer.answer()
                if n % 2:
                    assert (head.status_code, orjson.loads(body)) == (200, {"msg": "PONG"})
                else:
                    assert head.status_code == 404, n
                    assert f"NoSuchFunction{n}'" in orjson.loads(body)["detail"]
                assert header(head, "connection") is None  # kept
        assert limited.admission.open == 1
    finally:
        peer.close()


@pytest.mark.parametrize("limited", [FAST], indirect=True)
async def test_a_requests_session_makes_a_thousand_calls_on_one_connection(
    limited: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="urllib3")

    def calls() -> list[int]:
        with requests.Session() as session:
            url = f"http://127.0.0.1:{limited.port}/AP/Ping"
            return [session.post(url, json={}, timeout=10).status_code for _ in range(1000)]

    assert await asyncio.to_thread(calls) == [200] * 1000
    opened = [r for r in caplog.records if "Starting new HTTP connection" in r.getMessage()]
    assert len(opened) == 1


async def test_a_requests_session_makes_mixed_calls_with_no_failure_and_its_logout_ends_it(
    limited: App,
) -> None:
    await make_user(limited.deps, "alice")

    def calls() -> tuple[list[int], int, dict[str, Any]]:
        base = f"http://127.0.0.1:{limited.port}/AP"
        with requests.Session() as s:
            login = s.get(f"{base}/Authenticate", auth=("alice", PASSWORD), timeout=10).json()
            s.headers["aptoken"] = login["SessionToken"]
            statuses = []
            for n in range(27):
                if n % 3 == 0:
                    r = s.post(f"{base}/GetUserInfo", json={}, timeout=10)
                elif n % 3 == 1:
                    r = s.get(f"{base}/Ping", timeout=10)
                else:
                    r = s.post(f"{base}/GetUserAPIKeys", json={"UserId": login["UserId"]})
                statuses.append(r.status_code)
            logout = s.post(f"{base}/LogOut", timeout=10)
            after = s.post(f"{base}/GetUserInfo", json={}, timeout=10)
            return [*statuses, logout.status_code], after.status_code, after.json()

    statuses, after, refusal = await asyncio.to_thread(calls)
    assert statuses == [200] * 28
    assert (after, refusal["errorcode"]) == (401, 20)  # the session really ended


async def test_connection_close_and_http_1_0_end_the_connection_after_their_answer(
    limited: App,
) -> None:
    for request in (
        b"GET /AP/Ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /AP/Ping HTTP/1.0\r\n\r\n",
    ):
        peer = await Peer.open(limited)
        try:
            peer.writer.write(request + b"GET /AP/Ping HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = await asyncio.wait_for(peer.reader.read(), 10)  # read to the end
        finally:
            peer.close()
        assert raw.count(b"PONG") == 1, raw  # the second request is never answered
        assert b"\r\nconnection: close\r\n" in raw.lower()


@pytest.mark.parametrize("limited", [{"http_idle_seconds": 0.5}], indirect=True)
async def test_an_idle_connection_is_closed_after_http_idle_seconds_as_announced(
    limited: App,
) -> None:
    peer = await Peer.open(limited)
    try:
        peer.writer.write(peer.request("GET", "/AP/Ping"))
        head, _ = await peer.answer()
        assert header(head, "keep-alive") == "timeout=0.5"
        started = time.monotonic()
        assert await peer.closed_within(5)
        assert 0.4 < time.monotonic() - started < 3
    finally:
        peer.close()
    await asyncio.sleep(0.1)
    assert limited.admission.open == 0


@pytest.mark.parametrize("limited", [{"http_idle_seconds": 0.5}], indirect=True)
async def test_a_body_still_arriving_after_http_idle_seconds_is_408_with_connection_close(
    limited: App,
) -> None:
    peer = await Peer.open(limited)
    try:
        peer.writer.write(b"POST /AP/Ping HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        raw = await asyncio.wait_for(peer.reader.read(), 5)
    finally:
        peer.close()
    assert raw.startswith(b"HTTP/1.1 408") and b"\r\nconnection: close\r\n" in raw.lower()


@pytest.mark.parametrize("limited", [{"http_idle_seconds": 0.5}], indirect=True)
async def test_a_slow_client_cannot_hold_a_connection_past_the_idle_time(limited: App) -> None:
    """A head trickling in a byte at a time, always sending something: closed all the same."""
    peer = await Peer.open(limited)
    started = time.monotonic()
    try:
        for byte in b"GET /AP/Ping HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            peer.writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
            if peer.reader.at_eof() or peer.writer.is_closing():
                break
            if time.monotonic() - started > 3:
                break
        assert await peer.closed_within(2)
    finally:
        peer.close()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("limited", [{"max_connections_per_source": 2}], indirect=True)
async def test_kept_alive_connections_count_toward_the_caps(limited: App) -> None:
    kept = [await Peer.open(limited, "127.0.0.5") for _ in range(2)]
    try:
        for peer in kept:
            peer.writer.write(peer.request("GET", "/AP/Ping"))
            assert (await peer.answer())[0].status_code == 200
        third = await Peer.open(limited, "127.0.0.5")
        third.writer.write(third.request("GET", "/AP/Ping"))
        head, body = await third.answer()
        third.close()
        assert head.status_code == 503 and header(head, "connection") == "close"
        assert orjson.loads(body)["errorcode"] == 101
        kept.pop().close()
        await asyncio.sleep(0.1)
        again = await Peer.open(limited, "127.0.0.5")
        kept.append(again)
        again.writer.write(again.request("GET", "/AP/Ping"))
        assert (await again.answer())[0].status_code == 200
    finally:
        for peer in kept:
            peer.close()


@pytest.mark.parametrize("limited", [{"max_requests_per_second": 20}], indirect=True)
async def test_requests_on_one_connection_take_from_its_budget(limited: App) -> None:
    peer = await Peer.open(limited)
    try:
        peer.writer.write(b"".join(peer.request("GET", "/AP/Ping") for _ in range(40)))
        statuses = [(await peer.answer())[0].status_code for _ in range(40)]
    finally:
        peer.close()
    assert statuses[:20] == [200] * 20 and 429 in statuses[20:]


async def test_a_websocket_upgrade_after_plain_requests_on_the_same_connection_works(
    limited: App,
) -> None:
    peer = await Peer.open(limited)
    try:
        peer.writer.write(peer.request("GET", "/healthz"))
        assert (await peer.answer())[0].status_code == 200
        ws = ClientProtocol(parse_uri(limited.url))
        ws.send_request(ws.connect())
        peer.writer.write(b"".join(ws.data_to_send()))
        while ws.state is not State.OPEN:
            ws.receive_data(await asyncio.wait_for(peer.reader.read(4096), 10))
        ws.send_text(b'{"m":0,"i":2,"n":"Ping","o":"{}"}')
        peer.writer.write(b"".join(ws.data_to_send()))
        texts: list[bytes] = []
        while not texts:
            ws.receive_data(await asyncio.wait_for(peer.reader.read(4096), 10))
            texts += [e.data for e in ws.events_received() if getattr(e, "data", None)]
        assert orjson.loads(orjson.loads(texts[0])["o"]) == {"msg": "PONG"}
    finally:
        peer.close()


async def test_shutdown_closes_idle_kept_connections_at_once(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    app = App(settings_for(tmp_path, db=db), clock=clock, login_delay=0)
    await app.start()
    peer = await Peer.open(app)
    peer.writer.write(peer.request("GET", "/AP/Ping"))
    await peer.answer()
    started = time.monotonic()
    await asyncio.wait_for(app.stop(), 5)
    assert time.monotonic() - started < 2
    assert await peer.closed_within(1)
    peer.close()


async def _exchange(stream: Any, request: bytes) -> tuple[int, bytes]:
    """One request on a kept-alive connection: its status and body (by Content-Length)."""
    reader, writer = stream
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await asyncio.wait_for(reader.readexactly(length), 10)


def _ping_as(client: str) -> bytes:
    return f"GET /AP/Ping HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\n\r\n".encode()


@pytest.mark.parametrize(
    "limited",
    [{"trusted_proxies": ["127.0.0.2"], "max_connections_per_source": 1}],
    indirect=True,
)
async def test_a_proxys_kept_alive_connection_counts_each_request_under_its_own_client(
    limited: App,
) -> None:
    """A proxy keeps its upstream connections open for many clients: a request is counted
    under the client it names while it is served, not the connection under its first client
    for good (that client, with nothing open, would be refused; later ones never counted)."""
    pooled = await asyncio.open_connection("127.0.0.1", limited.port, local_addr=("127.0.0.2", 0))
    fresh = await asyncio.open_connection("127.0.0.1", limited.port, local_addr=("127.0.0.2", 0))
    try:
        assert (await _exchange(pooled, _ping_as("198.51.100.1")))[0] == 200
        assert (await _exchange(pooled, _ping_as("198.51.100.2")))[0] == 200
        # The pooled connection is idle: client .1 holds nothing and is served.
        assert (await _exchange(fresh, _ping_as("198.51.100.1")))[0] == 200
        assert limited.admission.by_source == {}
    finally:
        for _, writer in (pooled, fresh):
            writer.close()


async def test_a_logoff_during_an_http_request_leaves_its_kept_alive_connection_open(
    limited: App,
) -> None:
    """A session ended elsewhere while an /AP/ request of it is in flight: the request's
    connection is HTTP, so no LogoutEvent is pushed on it (there is no WebSocket there to
    carry one) and it keeps serving the client's next requests."""
    release = asyncio.Event()

    async def slow(conn: object, req: Empty) -> PingReply:
        await release.wait()
        return PingReply(msg="DONE")

    limited.functions.add("Slow", Empty, slow)
    await make_user(limited.deps, "kept")
    async with await Client.connect(limited.url) as c:
        login = await c.call("AuthenticateUser", {"UserName": "kept", "Password": PASSWORD})
        token = login.o["SessionToken"]
        stream = await asyncio.open_connection("127.0.0.1", limited.port)
        head = (
            f"POST /AP/Slow HTTP/1.1\r\nHost: x\r\nAPToken: {token}\r\n"
            "Content-Length: 2\r\n\r\n{}"
        )
        in_flight = asyncio.create_task(_exchange(stream, head.encode()))
        await asyncio.sleep(0.2)
        assert (await c.call("LogOut")).o["result"] is True
        release.set()
        assert (await in_flight)[0] == 200
    try:
        # Past websockets' close timeout (10 s), when a push on it would have ended it.
        await asyncio.sleep(11)
        status, body = await _exchange(stream, b"GET /AP/Ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, orjson.loads(body)) == (200, {"msg": "PONG"})
    finally:
        stream[1].close()


async def test_shutdown_answers_a_kept_alive_request_in_flight_with_connection_close(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    app = App(settings_for(tmp_path, db=db), clock=clock, login_delay=0.25)
    await app.start()
    peer = await Peer.open(app)
    try:
        wrong = orjson.dumps({"UserName": "nobody", "Password": "wrong"})
        for _ in range(5):  # failures pile up: the next attempt waits a second first
            peer.writer.write(peer.request("POST", "/AP/AuthenticateUser", wrong))
            assert header((await peer.answer())[0], "Connection") != "close"
        peer.writer.write(peer.request("POST", "/AP/AuthenticateUser", wrong))
        await asyncio.sleep(0.3)
        stopping = asyncio.ensure_future(app.stop())
        head, body = await peer.answer()
        assert orjson.loads(body)["errormsg"] == "Invalid username or password"
        assert header(head, "Connection") == "close"
        assert await peer.closed_within(5)
        await stopping
    finally:
        peer.close()
        await app.stop()
