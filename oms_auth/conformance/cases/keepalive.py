"""HTTP/1.1 persistent connections on /AP/ (docs/protocol.md, "The HTTP gateway: /AP/"): many
requests on one connection, answered in order, and a connection closed only after an answer
that says ``Connection: close``."""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import h11
import orjson

from ..kit import Failure, Options, expect
from ..registry import case

__all__ = ["HttpPeer"]

REQUESTS = 1000
BATCH = 100
PAUSE = 0.3  # between batches: below a server's per-connection request budget (500/s here)


class HttpPeer:
    """One HTTP connection whose answers are read with h11, as a client would (requests may be
    pipelined: each is written on its own)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, options: Options) -> HttpPeer:
        parts = urlsplit(options.url)
        secure = ssl.create_default_context() if parts.scheme == "wss" else None
        port = parts.port or (443 if secure else 80)
        host = parts.hostname or "127.0.0.1"
        opened = asyncio.open_connection(host, port, ssl=secure)
        reader, writer = await asyncio.wait_for(opened, options.timeout)
        return cls(reader, writer, f"{host}:{port}")

    def get(self, target: str, *extra: tuple[str, str]) -> bytes:
        """The bytes of a GET of ``target``."""
        writer = h11.Connection(h11.CLIENT)
        head = h11.Request(method="GET", target=target, headers=[("Host", self.host), *extra])
        return (writer.send(head) or b"") + (writer.send(h11.EndOfMessage()) or b"")

    async def answer(self, timeout: float = 10) -> tuple[h11.Response, bytes]:
        """The next answer: its head and body (Failure when the server closes instead)."""
        if self.h11.our_state is h11.IDLE:  # the reading side of a request already written
            self.h11.send(h11.Request(method="GET", target="/", headers=[("Host", self.host)]))
            self.h11.send(h11.EndOfMessage())
        head: h11.Response | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await asyncio.wait_for(self.reader.read(65536), timeout))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                if self.h11.their_state is h11.DONE and self.h11.our_state is h11.DONE:
                    self.h11.start_next_cycle()
                return head, body
            else:
                raise Failure(f"the server closed the connection without saying so ({event})")

    async def closed_within(self, timeout: float) -> bool:
        """Whether the server ends the connection (with no other answer) within ``timeout``."""
        try:
            return await asyncio.wait_for(self.reader.read(), timeout) == b""
        except (TimeoutError, ConnectionResetError):
            return False

    def close(self) -> None:
        self.writer.close()


def _says_close(head: h11.Response) -> bool:
    return any(k == b"connection" and b"close" in v.lower() for k, v in head.headers)


def _check(n: int, head: h11.Response, body: bytes) -> None:
    """Even requests are Pings, odd ones an unknown function named after n: an answer out of
    order shows."""
    expect(not _says_close(head), f"answer {n} says Connection: close on a kept connection")
    if n % 2 == 0:
        expect(head.status_code == 200 and orjson.loads(body) == {"msg": "PONG"}, f"answer {n}")
    else:
        detail = str(orjson.loads(body).get("detail", ""))
        expect(head.status_code == 404 and f"NoSuchFunction{n}" in detail, f"answer {n} order")


@case(
    "http-keepalive",
    f"{REQUESTS} /AP/ requests on one connection answered in order; it closes only after an"
    " answer saying Connection: close",
)
async def _keepalive(options: Options, evidence: list[str]) -> None:
    peer = await HttpPeer.open(options)
    try:
        for start in range(0, REQUESTS, BATCH):
            numbers = range(start, start + BATCH)
            targets = ["/AP/Ping" if n % 2 == 0 else f"/AP/NoSuchFunction{n}" for n in numbers]
            peer.writer.write(b"".join(peer.get(t) for t in targets))
            for n in numbers:
                _check(n, *await peer.answer(options.timeout))
            await asyncio.sleep(PAUSE)
        evidence.append(f"{REQUESTS} answers in order on one connection")
        peer.writer.write(peer.get("/AP/Ping", ("Connection", "close")))
        last, _ = await peer.answer(options.timeout)
        expect(_says_close(last), "the last answer does not say Connection: close")
        expect(await peer.closed_within(options.timeout), "the connection stayed open after it")
    finally:
        peer.close()
