"""Plain HTTP/1.1 on the WebSocket port, kept alive between requests
(docs/protocol.md, "The HTTP gateway: /AP/").

websockets' asyncio server accepts every connection and builds it as a :class:`PortConnection`
(its documented ``create_connection`` hook). Until a request asks for a WebSocket, the bytes go
to h11 (sans-I/O HTTP/1.1), not to websockets: requests are read one after the other (pipelined
ones wait their turn), each answered by :class:`~.http.HttpPages`, and the connection stays
open for the next, as clients that keep one connection for all their calls expect (a
``requests.Session``, Node's keep-alive agent). A request asking for a WebSocket is handed on
as it came (written again from what h11 read, followed by the bytes after it) to websockets,
which does the handshake and owns the connection from then on.

Why websockets' asyncio connection rather than its sans-I/O protocol under a driver of ours:
it already does everything after the handshake (closing handshake, keepalive pings, fragment
assembly, UTF-8 checks, compression, flow control), which a driver of ours would have to
rewrite; the hand-off uses public API only (the ``create_connection`` subclass, the asyncio
``data_received``). Its handshake waits with no timeout of its own (``open_timeout=None``):
this module's deadline bounds how long a request may take to arrive.

Rules:
- A request must arrive whole within ``http_idle_seconds`` of the connection's accept or of
  the previous answer. A connection that sent nothing more is then closed (every answer that
  keeps the connection says ``Keep-Alive: timeout=N``); one whose body is trickling in is
  answered 408 and closed; one whose head is trickling in is closed.
- A body is read within ``max_body`` (a frame's size), framed by Content-Length or chunked;
  past it 413. Content-Length beside Transfer-Encoding is 400 (the request smugglers' pair).
  A head h11 cannot read is 400 (431 past 64 KiB).
- The connection closes after an answer only when that answer says ``Connection: close``: the
  client asked for it (or spoke HTTP/1.0), the answer leaves a body unread, the node is
  shutting down, or the connection is past a cap. It never closes after an answer silently.
- While a request is served, what arrives after it waits in h11's buffer; past ``_BACKLOG``
  reading pauses until the answer is out, so a pipelining peer cannot queue unbounded input.
- Each request takes from the connection's requests-per-second budget (as a frame does on a
  WebSocket); past it 429 with a 101 standard response.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

import h11
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .connection import Budget
from .http import HSTS, HttpPages, busy, refused, text
from .transport import GuardedConnection

__all__ = ["PortConnection"]

log = logging.getLogger("oms_auth.server")

_MAX_HEAD = 65536
_BACKLOG = 1 << 17  # bytes read ahead while a request is served


class PortConnection(GuardedConnection):
    """Every connection on the port (see module). The app makes a subclass with its pages and
    limits (:meth:`~.transport.GuardedConnection.configured`)."""

    pages: HttpPages | None = None
    max_body = 65536
    idle_seconds = 30.0
    rate = 500.0  # requests per second on one connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        self.handed_on = False  # a WebSocket: websockets reads every byte from now on
        self.busy: asyncio.Task[None] | None = None  # the request being answered
        self.draining = False  # the node is stopping: close after the answer in progress
        self.budget = Budget()
        self._request: Request | None = None
        self._body = bytearray()
        self._close_after = False  # the client asked to close after this request
        self._deadline: asyncio.TimerHandle | None = None
        self._backlog = 0
        self._paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.pages is not None and not self.transport.is_closing():
            self.pages.connections.add(self)
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.pages is not None:
            self.pages.connections.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.handed_on or self.pages is None:
            super().data_received(data)
            return
        try:
            self.h11.receive_data(data)
        except RuntimeError:  # bytes after it ended (h11 read the end of the stream)
            return
        if self.busy is not None:
            self._backlog += len(data)
            if self._backlog > _BACKLOG and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return
        self._next()

    # websockets types its own as returning None; asyncio's is bool | None.
    def eof_received(self) -> bool | None:  # type: ignore[override]
        if self.handed_on or self.pages is None:
            super().eof_received()
            return None
        self.h11.receive_data(b"")
        if self.busy is None:
            self._next()
        # Half-closed: a request being served still gets its answer (TLS cannot half-close:
        # asyncio closes an SSL transport whatever this answers, and warns if it is True).
        return self.transport.get_extra_info("sslcontext") is None

    # -- requests -----------------------------------------------------------------------------

    def _next(self) -> None:
        """Read events until a request is complete (then serve it) or more bytes are needed."""
        while self.busy is None and not self.handed_on and not self.transport.is_closing():
            if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                self.h11.start_next_cycle()
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._malformed(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_data(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()

    def _on_request(self, event: h11.Request) -> None:
        request = _request(event)
        self._request, self._body = request, bytearray()
        tokens = _tokens(event.headers, b"connection")
        self._close_after = b"close" in tokens or event.http_version != b"1.1"
        self._identify(request)  # behind a trusted proxy: counted under the client it names
        if any("websocket" in v.lower() for v in request.headers.get_all("Upgrade")):
            self._hand_on(request)
            return
        if self.refused is not None:  # past a cap: told at once, its body never read
            self._send(busy(self.refused), close=True)
            return
        if _tokens(event.headers, b"transfer-encoding") and _has(event, b"content-length"):
            detail = "A body is framed by Content-Length or Transfer-Encoding, not both"
            self._send(refused(HTTPStatus.BAD_REQUEST, detail), close=True)
            return
        if _declared_length(event) > self.max_body:
            self._send(self._too_long(), close=True)
            return
        if self.h11.they_are_waiting_for_100_continue:
            self._write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))

    def _on_data(self, data: bytes) -> None:
        self._body += data
        if len(self._body) > self.max_body:  # a chunked body past the limit
            self._send(self._too_long(), close=True)

    def _too_long(self) -> Response:
        return refused(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"A body is at most {self.max_body} bytes"
        )

    def _dispatch(self) -> None:
        self._disarm()
        request, body = self._request, bytes(self._body)
        assert request is not None
        self._request, self._body = None, bytearray()
        self.busy = asyncio.get_running_loop().create_task(self._serve(request, body))

    async def _serve(self, request: Request, body: bytes) -> None:
        assert self.pages is not None
        try:
            if not self.budget.take(asyncio.get_running_loop().time(), self.rate):
                limit = f"Too many requests per second on this connection (limit {self.rate:g})"
                answer = busy(limit, HTTPStatus.TOO_MANY_REQUESTS)
            else:
                answer = await self.pages.answer(self, request, body)
        except Exception:
            log.exception("HTTP request failed: %s", request.path.partition("?")[0][:80])
            answer = text(HTTPStatus.INTERNAL_SERVER_ERROR, "Server error\n")
        self.busy = None
        self._send(answer, method=request.method)
        if self.admission is not None and self.place is not None:
            self.admission.served(self.place)  # behind a proxy: the next request names its own
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._backlog = 0
        if not self.transport.is_closing():
            self._arm()
            self._next()

    def _send(self, answer: Response, *, close: bool = False, method: str = "") -> None:
        """Write ``answer`` (no body for HEAD); close after it when it says so (see module)."""
        close = close or self._close_after or self.draining or self.refused is not None
        headers = [(k, v) for k, v in answer.headers.raw_items() if k.lower() != "connection"]
        assert self.pages is not None
        if self.pages.tls:
            headers.append(("Strict-Transport-Security", HSTS))
        if close:
            headers.append(("Connection", "close"))
        else:
            headers.append(("Keep-Alive", f"timeout={self.idle_seconds:g}"))
        try:
            status = answer.status_code
            out = self.h11.send(
                h11.Response(status_code=status, headers=headers, reason=answer.reason_phrase)
            )
            if answer.body and method != "HEAD":
                out += self.h11.send(h11.Data(data=bytes(answer.body)))
            out += self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # the client broke the exchange first
            self.transport.abort()
            return
        self._write(out)
        if self.h11.our_state is not h11.DONE:  # MUST_CLOSE: said so in the answer
            self.transport.close()

    def _write(self, data: bytes | None) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _malformed(self, exc: h11.RemoteProtocolError) -> None:
        """A request h11 cannot read: 400 (431 for a head past the limit), then close."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = HTTPStatus(exc.error_status_hint)
            self._send(refused(status, f"Malformed request: {exc}"[:200]), close=True)
        self.transport.close()

    def _hand_on(self, request: Request) -> None:
        """A WebSocket upgrade: websockets reads the request again and owns the connection."""
        self._disarm()
        self.handed_on = True
        if self.pages is not None:
            self.pages.connections.discard(self)
        rest, _ = self.h11.trailing_data
        try:
            head = request.serialize()
        except UnicodeError:  # a path websockets would not take either
            self.transport.close()
            return
        super().data_received(head + rest)

    # -- deadline -----------------------------------------------------------------------------

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.idle_seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        """No whole request within ``idle_seconds`` (see module)."""
        self._deadline = None
        if self.busy is not None or self.handed_on:
            return
        if self.h11.our_state is h11.SEND_RESPONSE:  # its head came, its body did not
            self._send(
                refused(HTTPStatus.REQUEST_TIMEOUT, "The request did not arrive in time"),
                close=True,
            )
        self.transport.close()

    def close_when_idle(self) -> None:
        """The node is stopping: close now if no request is being answered, else after its
        answer (which says ``Connection: close``)."""
        self.draining = True
        if self.busy is None and not self.handed_on:
            self.transport.close()


def _request(event: h11.Request) -> Request:
    """h11's request as websockets' (the type every page takes)."""
    headers = Headers(
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
    )
    return Request(
        event.target.decode("latin-1"),
        headers,
        event.method.decode("ascii"),
        f"HTTP/{event.http_version.decode('ascii')}",
    )


def _tokens(headers: Any, name: bytes) -> set[bytes]:
    """The comma-separated tokens of every ``name`` header, lower case."""
    return {
        token.strip().lower()
        for key, value in headers.raw_items()
        if key.lower() == name
        for token in value.split(b",")
    }


def _has(event: h11.Request, name: bytes) -> bool:
    return any(key == name for key, _ in event.headers)


def _declared_length(event: h11.Request) -> int:
    for key, value in event.headers:
        if key == b"content-length":
            return int(value)  # h11 checked it is digits, and one value
    return 0
