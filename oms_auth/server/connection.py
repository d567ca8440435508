"""Per-connection state: who is logged in on it, and the requests it has in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

from ..engine.accounts import Enrolment
from ..store import User
from .forwarded import NO_PROXIES, Proxies

__all__ = ["Budget", "Conn", "source_of"]


def source_of(
    ws: ServerConnection, proxies: Proxies = NO_PROXIES, headers: Headers | None = None
) -> str:
    """The client's address, as every per-address rule and the audit trail know it: the peer,
    or behind a trusted proxy the client it forwards for (:mod:`.forwarded`), as ``headers``
    (one HTTP request's; by default the WebSocket handshake's) name it."""
    peer = ws.remote_address
    address = str(peer[0]) if peer else "unknown"
    if headers is None and ws.request is not None:
        headers = ws.request.headers
    return proxies.client(address, headers)


class Budget:
    """A connection's requests-per-second token bucket: starts full, holds up to one second's
    worth."""

    __slots__ = ("tokens", "at")

    def __init__(self) -> None:
        self.tokens = -1.0
        self.at = 0.0

    def take(self, now: float, rate: float) -> bool:
        """One request's worth from a bucket refilled at ``rate`` per second; False when
        empty."""
        if self.tokens < 0:
            self.tokens = rate
        else:
            self.tokens = min(rate, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Conn:
    """One client connection. ``user`` is set while a session is authenticated on it; only
    :class:`~.registry.Registry` changes the login fields."""

    __slots__ = (
        "ws",
        "source",
        "user",
        "token_digest",
        "last_activity",
        "last_written",
        "pending",
        "token",
        "key_permissions",
        "enrolment",
        "verified_at",
        "proved_at",
        "lasting",
        "last_frame",
        "idle_timer",
        "closed",
        "tasks",
        "budget",
        "agent",
        "device_id",
    )

    def __init__(
        self, ws: ServerConnection, source: str, *, lasting: bool = True, agent: str = ""
    ) -> None:
        self.ws = ws
        self.source = source
        # The client's User-Agent (its handshake's, or the HTTP request's): a device's name.
        self.agent = agent
        # The DeviceId its last password login named: its second step is the same device.
        self.device_id: str | None = None
        self.user: User | None = None
        self.token_digest: bytes | None = None
        self.last_activity = 0.0
        self.last_written = 0.0
        # The token of a login waiting for its second step on this connection (a secret).
        self.pending: str | None = None
        # The session's token (a secret): Authenticate2FA that confirms an enrolment answers it.
        self.token: str | None = None
        # The session was opened with an API key: the key's permissions (it stays so on every
        # connection resuming it). None for a password session.
        self.key_permissions: frozenset[str] | None = None
        # An EnableGoogle2FA waiting for its first code on this connection.
        self.enrolment: Enrolment | None = None
        # When a 2FA last succeeded on this connection (Disable2FA needs no code soon after).
        self.verified_at: float | None = None
        # When this connection itself proved the password (and second step): fresh proof for
        # account-security changes. None on a connection that resumed a session by token.
        self.proved_at: float | None = None
        # False for an HTTP request: nothing it leaves on the connection outlives it.
        self.lasting = lasting
        # When the last frame arrived, and the timer that closes the connection once it has
        # been quiet for idle_timeout_seconds (re-armed when it fires early).
        self.last_frame = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.budget = Budget()  # requests per second

    def take_token(self, now: float, rate: float) -> bool:
        return self.budget.take(now, rate)
