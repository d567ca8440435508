"""The websockets adapter: frames in, one answer out per request, concurrently per connection.

Routing errors (a frame we cannot route) are m=5; everything a function decides, success or
refusal, is an m=1 reply. Each request runs as its own task, so a slow one (an Argon2id hash)
never holds back a fast one on the same connection; answers are matched by ``i``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from protocol.errors import ErrorCode, StandardResponse
from protocol.frame import Frame, encode_reply
from protocol.messages import LogoutReason

from ..config import Settings
from ..engine.sessions import Sessions
from ..errors import Refusal, server_error
from ..logs import request_context
from .connection import Conn, source_of
from .forwarded import Proxies
from .functions import Function, Functions
from .metrics import Metrics
from .routing import Immediate, route
from .transport import GuardedConnection, refusal_of

__all__ = ["Gateway", "WS_PATHS"]

log = logging.getLogger("oms_auth.server")

# Matched case-insensitively: published clients ask for /wsgateway/ and /WSGateway alike.
WS_PATHS = frozenset({"/wsgateway/", "/wsgateway", "/"})


class Gateway:
    """Serves OMS frames on WebSocket connections."""

    def __init__(
        self, functions: Functions, sessions: Sessions, metrics: Metrics, settings: Settings
    ) -> None:
        self.functions = functions
        self.sessions = sessions
        self.metrics = metrics
        self.settings = settings
        self.registry = functions.registry
        self.connections: set[Conn] = set()
        self.proxies = Proxies(settings.trusted_networks(), settings.proxy_header)
        # Bytes of the requests in flight on every connection (``max_in_flight_bytes``).
        self.in_flight_bytes = 0
        # Set when the node drains: a request that comes after is refused at once (it would
        # run, its effects committed, and lose its answer with the 1012 close).
        self.draining = False

    # -- connection life ----------------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        # Counted toward the caps since it was accepted (transport.Admission): one past them
        # is told so now that it asked for a WebSocket.
        refused = refusal_of(ws)
        if refused is not None:
            await ws.close(CloseCode.TRY_AGAIN_LATER, refused)
            return
        agent = ws.request.headers.get("User-Agent", "") if ws.request is not None else ""
        conn = Conn(ws, source_of(ws, self.proxies), agent=agent)
        if isinstance(ws, GuardedConnection):
            ws.limit_frames(self._frame_budget(conn), self._too_fast())
        self.connections.add(conn)
        self.metrics.connections += 1
        try:
            await self._serve(conn)
        except ConnectionClosed:
            pass  # a client that vanished without a close frame is not our error
        finally:
            self.connections.discard(conn)
            self.metrics.connections -= 1
            conn.closed = True
            self.registry.log_off(conn)
            # Requests already accepted finish (their effects are committed); only their
            # answers are lost with the connection.
            if conn.tasks:
                await asyncio.gather(*conn.tasks, return_exceptions=True)

    def _frame_budget(self, conn: Conn) -> Callable[[], bool]:
        """A client's pings take from the same budget as its requests (docs/operations.md,
        "Overload and shutdown")."""
        loop = asyncio.get_running_loop()
        rate = self.settings.max_requests_per_second
        return lambda: conn.take_token(loop.time(), rate)

    def _too_fast(self) -> str:
        return (
            f"Too many requests per second on this connection (limit "
            f"{self.settings.max_requests_per_second:g})"
        )

    async def _serve(self, conn: Conn) -> None:
        # One idle timer per connection, re-armed only when it fires, rather than a timeout
        # scheduled and cancelled around every frame (a tenth of a Ping's cost).
        idle = self.settings.idle_timeout_seconds
        loop = asyncio.get_running_loop()
        conn.last_frame = loop.time()
        conn.idle_timer = loop.call_later(idle, self._idle_check, conn, idle)
        try:
            async for data in conn.ws:
                conn.last_frame = loop.time()
                await self._on_message(conn, data)
        finally:
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()

    def _idle_check(self, conn: Conn, idle: float) -> None:
        loop = asyncio.get_running_loop()
        quiet = loop.time() - conn.last_frame
        if quiet < idle:
            conn.idle_timer = loop.call_later(idle - quiet, self._idle_check, conn, idle)
            return
        conn.idle_timer = None
        task = asyncio.ensure_future(conn.ws.close(CloseCode.NORMAL_CLOSURE, "idle timeout"))
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)

    async def drain(self, grace: float) -> None:
        """Shutdown: let requests in flight finish (up to ``grace`` seconds), then close every
        connection with 1012 (service restart: reconnect, to another node where there is one,
        and resume the session with its token)."""
        self.draining = True
        tasks = [t for conn in self.connections for t in conn.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        await asyncio.gather(
            *(c.ws.close(CloseCode.SERVICE_RESTART, "service restart") for c in self.connections),
            return_exceptions=True,
        )

    # -- one message --------------------------------------------------------------------------

    async def _on_message(self, conn: Conn, data: str | bytes) -> None:
        routed = route(self.functions.table, data)
        if isinstance(routed, Immediate):
            self.metrics.count(routed.function, routed.code)
            await self.send(conn, routed.data)
            return
        frame, function, payload = routed.frame, routed.function, routed.payload
        size = len(data)
        refusal = self._overloaded(conn, size)
        if refusal is not None:
            self.metrics.count(function.name, int(ErrorCode.OPERATION_FAILED))
            await self._reply(
                conn, frame, StandardResponse.failure(ErrorCode.OPERATION_FAILED, refusal)
            )
            return
        await self._check_session(conn)
        if function.inline:
            if conn.token_digest is None or not self.sessions.touch_due(conn.last_written):
                # Answered here, as it never waits: no task, no request context (no secrets,
                # nothing to log), no timing.
                reply = await function.handler(conn, payload)
                self.metrics.count(function.name, 0)
                await self._reply(conn, frame, reply)
                return
            await self._run(conn, frame, function, payload)
            return
        task = asyncio.create_task(self._run(conn, frame, function, payload))
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)
        # The bytes a waiting request holds (its frame, its payload) count until it ends, so
        # many connections with many large requests in flight stay within the node's budget.
        self.in_flight_bytes += size
        task.add_done_callback(lambda _: self._done_in_flight(size))

    def _done_in_flight(self, size: int) -> None:
        self.in_flight_bytes -= size

    def _overloaded(self, conn: Conn, size: int = 0) -> str | None:
        s = self.settings
        if self.draining:
            return "The server is restarting; reconnect and try again"
        if self.in_flight_bytes + size > s.max_in_flight_bytes:
            self.metrics.event("requests_over_memory")
            return (
                "The server holds too many large requests in flight; try again in a moment "
                f"(limit {s.max_in_flight_bytes} bytes per node)"
            )
        if len(conn.tasks) >= s.max_in_flight_per_connection:
            return (
                f"Too many requests in flight on this connection (limit "
                f"{s.max_in_flight_per_connection}); wait for answers before sending more"
            )
        if not conn.take_token(asyncio.get_running_loop().time(), s.max_requests_per_second):
            return self._too_fast()
        return None

    async def _check_session(self, conn: Conn) -> None:
        """A request is activity on the connection's session, unless it already expired (the
        client is told before the request is answered)."""
        if conn.user is None or conn.token_digest is None:
            return
        now = self.sessions.deps.clock()
        if self.sessions.expired(conn.last_activity, now):
            await self.registry.tell_and_log_off(conn, LogoutReason.SESSION_EXPIRED)
            return
        conn.last_activity = now

    async def _run(self, conn: Conn, frame: Frame, function: Function, payload: Any) -> None:
        await self._reply(conn, frame, await self.call(conn, function, payload, frame.i))

    async def call(self, conn: Conn, function: Function, payload: Any, i: int = 0) -> Any:
        """Run one function for a connection (any transport): its reply, or the standard
        response of its refusal; an unexpected exception is 102 with a reference, logged."""
        started = asyncio.get_running_loop().time()
        secrets = [getattr(payload, key) for key in function.secret_fields]
        with request_context(secrets) as cid:
            try:
                if conn.token_digest is not None:
                    written = await self.sessions.touch(conn.token_digest, conn.last_written)
                    if written is None:  # the session was revoked elsewhere
                        reason = LogoutReason.LOGGED_OUT_ELSEWHERE
                        await self.registry.tell_and_log_off(conn, reason)
                    else:
                        conn.last_written = written
                reply: Any = await function.handler(conn, payload)
                code = reply.errorcode if isinstance(reply, StandardResponse) else 0
            except Refusal as refusal:
                reply = refusal.response()
                code = int(refusal.code)
            except Exception:
                # The payload is not logged: it may hold a password or a code.
                log.exception("request failed ref=%s: %s i=%d", cid, function.name, i)
                reply = server_error(cid)
                code = int(ErrorCode.SERVER_ERROR)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s i=%d from %s -> %d in %.1f ms",
                    function.name,
                    i,
                    conn.source,
                    code,
                    (asyncio.get_running_loop().time() - started) * 1e3,
                )
        self.metrics.count(function.name, code, asyncio.get_running_loop().time() - started)
        return reply

    async def _reply(self, conn: Conn, frame: Frame, reply: object) -> None:
        await self.send(conn, encode_reply(frame.i, frame.n, reply))

    @staticmethod
    async def send(conn: Conn, data: bytes) -> None:
        """Send one frame; a connection that is gone is not an error."""
        try:
            await conn.ws.send(data, text=True)
        except ConnectionClosed:
            pass
