"""Plain HTTP beside the WebSocket: the pages and the /AP/ gateway's place among them.

Requests come from :mod:`.http1` (h11, kept alive), and from websockets' ``process_request``
hook for a request that asked for a WebSocket upgrade: one on a gateway path is passed through,
any other is answered as a page and, through the ``process_response`` hook
(:meth:`HttpPages.finish`), says ``Connection: close``. Only GET and HEAD are served (GET and
POST on /AP/). A connection past a connection cap (:mod:`.transport`) is answered 503 with a
101 standard response. Under TLS every answer carries HSTS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from protocol.errors import ErrorCode, StandardResponse

from ..store import Store
from .connection import source_of
from .forwarded import NO_PROXIES, Proxies
from .metrics import Metrics
from .transport import refusal_of

__all__ = ["HttpPages", "HSTS", "busy", "refused", "text"]

Page = Callable[[Request], Awaitable[Response]]
# a year: browsers keep to HTTPS for this host (docs/protocol.md, "The HTTP gateway: /AP/")
HSTS = "max-age=31536000"


def response(
    status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> Response:
    h = Headers()
    h["Content-Type"] = content_type
    h["Content-Length"] = str(len(body))
    h["Cache-Control"] = "no-store"
    h["X-Content-Type-Options"] = "nosniff"
    for key, value in (headers or {}).items():
        h[key] = value
    return Response(status.value, status.phrase, h, body)


def text(status: HTTPStatus, body: str) -> Response:
    return response(status, body.encode(), "text/plain; charset=utf-8")


class HttpPages:
    """Routes plain HTTP requests; extra pages are added with :meth:`add`."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        ws_paths: frozenset[str],
        proxies: Proxies = NO_PROXIES,
        *,
        tls: bool = False,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.ws_paths = ws_paths
        self.proxies = proxies  # whose forwarding header names the client
        self.tls = tls
        # The /AP/ gateway (http_gateway.HttpGateway), when the app installs one.
        self.api: Callable[[ServerConnection, Request, str, bytes], Awaitable[Response]] | None
        self.api = None
        # Connections reading plain HTTP (http1.PortConnection), closed on the way down.
        self.connections: set[Any] = set()
        self.pages: dict[str, Page] = {
            "/healthz": self.healthz,
            "/metrics": self.render_metrics,
            "/favicon.ico": self.no_content,  # browsers ask; a 404 would be a console error
        }
        self.extra_metrics: Callable[[], Awaitable[dict[str, int]]] | None = None
        # Whether the mail transport's folder takes a write (Transport.writable), for /healthz.
        self.mail_writable: Callable[[], Awaitable[str | None]] | None = None
        self._probe: asyncio.Future[list[str]] | None = None  # the /healthz probe running

    def add(self, path: str, page: Page) -> None:
        self.pages[path] = page

    async def __call__(self, conn: ServerConnection, request: Request) -> Response | None:
        """websockets' ``process_request``: a request that asked for an upgrade."""
        path, _, _ = request.path.partition("?")
        # Any header may come twice: read as a list, never as the one value it should be.
        upgrade = any("websocket" in v.lower() for v in request.headers.get_all("Upgrade"))
        if upgrade and path.lower() in self.ws_paths and request.method == "GET":
            return None  # the gateway closes one past a cap with 1013
        return await self.answer(conn, request)

    async def answer(self, conn: ServerConnection, request: Request, body: bytes = b"") -> Response:
        """The answer to one plain request (``body``: a POST's, as read)."""
        path, _, _ = request.path.partition("?")
        gateway = path.lower() in self.ws_paths
        refusal = refusal_of(conn)
        if refusal is not None:
            return busy(refusal)
        if self.api is not None and path.lower().startswith("/ap/"):
            if request.method not in ("GET", "POST"):  # HEAD too: a function must not run
                return text(HTTPStatus.METHOD_NOT_ALLOWED, "/AP/ takes GET and POST\n")
            source = source_of(conn, self.proxies, request.headers)
            return await self.api(conn, request, source, body)
        if request.method not in ("GET", "HEAD"):
            return text(HTTPStatus.METHOD_NOT_ALLOWED, "Only GET and HEAD are served here\n")
        page = self.pages.get(path)
        if page is None:
            if gateway:
                return text(HTTPStatus.UPGRADE_REQUIRED, "This path speaks WebSocket\n")
            return text(HTTPStatus.NOT_FOUND, "Not found\n")
        answer = await page(request)
        return _headless(answer) if request.method == "HEAD" else answer

    def finish(self, conn: ServerConnection, request: Request, answer: Response) -> None:
        """websockets' ``process_response``: every answer, the WebSocket handshake's too."""
        headers = answer.headers
        if self.tls:
            headers["Strict-Transport-Security"] = HSTS
        if answer.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            if "Connection" in headers:
                del headers["Connection"]
            headers["Connection"] = "close"  # websockets closes after a handshake it refused

    async def drain(self, grace: float) -> None:
        """Shutdown: idle HTTP connections close now, busy ones after their answer (which says
        ``Connection: close``), within ``grace`` seconds."""
        busy = []
        for conn in list(self.connections):
            conn.close_when_idle()
            if conn.busy is not None:
                busy.append(conn.busy)
        if busy:
            await asyncio.wait(busy, timeout=grace)

    async def no_content(self, request: Request) -> Response:
        return response(HTTPStatus.NO_CONTENT, b"", "text/plain")

    async def healthz(self, request: Request) -> Response:
        """200 only when the store takes a write (one it rolls back) and the mail transport's
        folder takes one too, so a node with a full disk leaves the load balancer's pool; 503
        with each reason (no path, no secret: anyone may ask) otherwise. Requests that come
        while a probe runs share its answer: a flood of them costs one probe at a time."""
        if self._probe is None:
            self._probe = probe = asyncio.ensure_future(self._health_reasons())
            probe.add_done_callback(lambda _: setattr(self, "_probe", None))
        reasons = await asyncio.shield(self._probe)
        if not reasons:
            return text(HTTPStatus.OK, "ok\n")
        return text(HTTPStatus.SERVICE_UNAVAILABLE, "".join(f"{r}\n" for r in reasons))

    async def _health_reasons(self) -> list[str]:
        checks: list[Awaitable[str | None]] = [self.store.writable()]
        if self.mail_writable is not None:
            checks.append(self.mail_writable())
        store, *mail = await asyncio.gather(*checks)
        reasons = [f"store: {store}"] if store else []
        return reasons + [f"mail: {m}" for m in mail if m]

    async def render_metrics(self, request: Request) -> Response:
        extra = await self.extra_metrics() if self.extra_metrics else None
        body = self.metrics.render(extra).encode()
        return response(HTTPStatus.OK, body, "text/plain; version=0.0.4; charset=utf-8")


def busy(reason: str, status: HTTPStatus = HTTPStatus.SERVICE_UNAVAILABLE) -> Response:
    """A request on a connection past a cap or its budget; ``reason`` as a WebSocket would be
    told, as a 101 standard response."""
    detail = f"{reason[:1].upper()}{reason[1:]}; try again later"
    refusal = StandardResponse.failure(ErrorCode.OPERATION_FAILED, detail)
    return response(status, msgspec.json.encode(refusal), "application/json")


def refused(status: HTTPStatus, detail: str) -> Response:
    """A request refused for its form: ``status`` with a 100 standard response."""
    refusal = StandardResponse.failure(ErrorCode.INVALID_REQUEST, detail)
    return response(status, msgspec.json.encode(refusal), "application/json")


def _headless(answer: Response) -> Response:
    """A HEAD answer: the GET's status and headers, no body."""
    return Response(answer.status_code, answer.reason_phrase, answer.headers, b"")
