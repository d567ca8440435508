"""What one peer may cost the node (docs/operations.md, "Overload and shutdown"), for every TCP
connection on the
port, WebSocket or HTTP alike.

- Every connection counts from accept until it closes toward ``max_connections`` and, by
  client address, toward ``max_connections_per_source`` (:class:`Admission`), including while
  its request head or body is still arriving. One past a cap is told why once its request
  arrives (HTTP 503 with a 101, WebSocket close 1013); only so many may wait for that (per
  address, the cap again), the rest are closed at once: one address never holds more than
  twice its cap of descriptors.
- Behind a trusted proxy the address is the client the proxy names in the request head; until
  the head is in, such a connection counts toward the node only, never as the proxy's own.
- Its unsent output is bounded (``max_pending_output_bytes``, the transport's high-water mark):
  past it the peer is not reading what it asked for (answers, events, pongs) and is dropped.
- Its control frames (pings, and pongs nobody asked for) and the fragments of its messages are
  requests too: each takes from the connection's requests-per-second budget, which the gateway
  shares with its requests (a message in k fragments costs k); past it the connection is closed
  with 1008. websockets answers a ping inside ``data_received``, before any handler runs, and
  queues every frame of a read (up to 256 KiB of them) at once, so the budget is checked on
  each frame as it is processed: a flood of tiny fragments or pings stops within a second's
  budget, with what it queued freed as the connection ends.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request

from .forwarded import NO_PROXIES, Proxies

__all__ = ["Admission", "GuardedConnection", "NODE_FULL", "SOURCE_FULL", "refusal_of"]

NODE_FULL = "too many connections to this node"
SOURCE_FULL = "too many connections from this address"
_CONTROL = (Opcode.PING, Opcode.PONG)


@dataclass(slots=True)
class Place:
    """One connection's place in the counts."""

    peer: str
    node: bool = False  # counted toward max_connections
    source: str | None = None  # the address it counts under, once known
    refused: str | None = None  # why it is refused, told once its request is in
    waiting: bool = False  # refused, and holding one of the places to be told so


class Admission:
    """Counts connections per node and per client address (see module)."""

    def __init__(
        self,
        max_connections: int,
        per_source: int,
        proxies: Proxies = NO_PROXIES,
        count: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.max_connections = max_connections
        self.per_source = per_source
        self.proxies = proxies
        self.count = count  # a named event for /metrics
        self.open = 0
        self.by_source: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()  # refused, to be told, by peer

    def arrive(self, peer: str) -> Place | None:
        """A connection was accepted: its place, or None to close it at once."""
        place = Place(peer)
        if self.open >= self.max_connections:
            return self._refuse(place, NODE_FULL)
        if not self.proxies.trusts(peer):
            if self.by_source[peer] >= self.per_source:
                return self._refuse(place, SOURCE_FULL)
            self.by_source[peer] += 1
            place.source = peer
        self.open += 1
        place.node = True
        return place

    def identify(self, place: Place, client: str) -> None:
        """A trusted proxy's connection, once a request head named the client. A proxy keeps
        its upstream connections open for many clients, so each request is counted under the
        client it names (the place moves from the one before; :meth:`served` gives it back)."""
        if not place.node or place.source == client:
            return
        if place.source is not None:
            if not self.proxies.trusts(place.peer):
                return  # a direct peer is counted under its own address for good
            self.served(place)
        if self.by_source[client] >= self.per_source:
            self.open -= 1
            place.node = False
            place.refused = SOURCE_FULL  # told at once: its request is in
            self.count("connections_refused")
            return
        self.by_source[client] += 1
        place.source = client

    def served(self, place: Place) -> None:
        """A trusted proxy's request was answered: its client's place is given back (the
        connection, idle in the proxy's pool, carries no client until its next request)."""
        if place.source is not None and self.proxies.trusts(place.peer):
            _decrement(self.by_source, place.source)
            place.source = None

    def leave(self, place: Place) -> None:
        if place.node:
            self.open -= 1
            place.node = False
        if place.source is not None:
            _decrement(self.by_source, place.source)
            place.source = None
        if place.waiting:
            _decrement(self.waiting, place.peer)
            place.waiting = False

    def _refuse(self, place: Place, reason: str) -> Place | None:
        self.count("connections_refused")
        # A proxy carries many clients: only the node's bound applies to it.
        per_peer = self.max_connections if self.proxies.trusts(place.peer) else self.per_source
        if self.waiting[place.peer] >= per_peer or self.waiting.total() >= self.max_connections:
            return None
        self.waiting[place.peer] += 1
        place.refused, place.waiting = reason, True
        return place


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class GuardedConnection(ServerConnection):
    """The server connection of every client (see module). The app makes a subclass with its
    :class:`Admission` and limits (:meth:`configured`); without one, nothing is counted."""

    admission: Admission | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.place: Place | None = None
        # Takes one request's worth from the connection's budget; False when it is empty.
        self.frame_budget: Callable[[], bool] | None = None
        self.over_budget = ""  # the close reason past it
        self.refusing_frames = False

    @classmethod
    def configured(cls, **limits: Any) -> type[GuardedConnection]:
        return type(cls.__name__, (cls,), limits)

    @property
    def refused(self) -> str | None:
        """Why this connection is past a cap (told as 503 or 1013), else None."""
        return self.place.refused if self.place is not None else None

    def limit_frames(self, budget: Callable[[], bool], reason: str) -> None:
        """Control frames from now on take from ``budget``; past it: close 1008 ``reason``."""
        self.frame_budget, self.over_budget = budget, reason

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.admission is None:
            return
        peer = transport.get_extra_info("peername")
        self.place = self.admission.arrive(str(peer[0]) if peer else "unknown")
        if self.place is None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.admission is not None and self.place is not None:
            self.admission.leave(self.place)

    def pause_writing(self) -> None:
        # The high-water mark is max_pending_output_bytes: a peer with that much unsent is
        # not reading what it asked for. Dropped on the next turn of the loop, not inside the
        # write that got here (the writer may have more to hand the transport first).
        super().pause_writing()
        asyncio.get_running_loop().call_soon(self._drop_unread)

    # -- websockets ---------------------------------------------------------------------------

    def process_event(self, event: Any) -> None:
        if self.refusing_frames:
            return  # frames parsed in the same read as the one past the budget
        if self.request is None and isinstance(event, Request):
            self._identify(event)
        elif isinstance(event, Frame) and _costs_a_request(event):
            if self.frame_budget is not None and not self.frame_budget():
                self._close_over_budget()
                return
        super().process_event(event)

    def _identify(self, request: Request) -> None:
        if self.admission is None or self.place is None:
            return
        proxies = self.admission.proxies
        if proxies.trusts(self.place.peer):
            self.admission.identify(self.place, proxies.client(self.place.peer, request.headers))

    def _close_over_budget(self) -> None:
        """Close 1008 at once: nothing more this peer sends is read or answered."""
        self.refusing_frames = True
        if self.admission is not None:
            self.admission.count("connections_over_rate")
        self.protocol.fail(CloseCode.POLICY_VIOLATION, self.over_budget)
        for data in self.protocol.data_to_send():
            if data:  # the empty one asks for the end of the stream: abort() below ends it
                self.transport.write(data)
        # No closing handshake with a peer that floods: waiting for it would mean reading the
        # flood (a TLS shutdown reads on until its timeout). What the socket took of the close
        # frame still reaches a peer that reads.
        self.transport.abort()

    def _drop_unread(self) -> None:
        if self.admission is not None:
            self.admission.count("connections_dropped_unread")
        self.transport.abort()


def _costs_a_request(frame: Frame) -> bool:
    """A control frame, or a fragment but the last of a message: work a request's budget pays
    for. (The last fragment completes a message, which the gateway counts as the request.)"""
    return frame.opcode in _CONTROL or not frame.fin


def refusal_of(ws: ServerConnection) -> str | None:
    """Why ``ws`` is past a cap, or None (always None for a connection nothing counts)."""
    return ws.refused if isinstance(ws, GuardedConnection) else None
