"""Hearing what other nodes revoked: PostgreSQL LISTEN/NOTIFY, kept up across lost connections.

The store sends a notice (:func:`notice`) on :data:`CHANNEL` inside each transaction that ends
sessions, and records the revocation in the ``revocations`` table. :class:`RevocationListener`
holds one dedicated connection LISTENing on the channel and calls its callbacks with each
revocation another node made.

Rules:

- Only other nodes' revocations, of this store's schema, are reported: the node that made one
  has logged its own connections off already.
- Each revocation is reported once (by its id in ``revocations``), whether it arrives as a
  notice or through a catch-up.
- The connection is probed every ``keepalive_seconds``; once it is gone, the listener reconnects
  with a doubling wait between ``retry[0]`` and ``retry[1]`` seconds, and after each reconnect
  catches up from ``revocations`` with what other nodes did while nobody listened (kept
  :data:`CHANGES_KEPT_SECONDS`). The listener's task never ends by itself: it keeps trying.
- Callbacks run on the event loop, one after another; one that raises is logged and the others
  still run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..tasks import cancel
from .records import Revocation

if TYPE_CHECKING:
    import asyncpg
    import asyncpg.pool

__all__ = [
    "CHANNEL",
    "CHANGES_KEPT_SECONDS",
    "announce",
    "notice",
    "parse_notice",
    "RevocationListener",
]

log = logging.getLogger("oms_auth.store")

CHANNEL = "oms_auth_revoked"
# How long revocations are kept for a listener to catch up after a reconnect.
CHANGES_KEPT_SECONDS = 86400.0


def notice(schema: str, node: str, change_id: int, revocation: Revocation) -> str:
    """The payload told on :data:`CHANNEL`: who (schema, node) revoked what (the row id in
    ``revocations``, the user, the reason, the session's digest or ``-`` for all of them)."""
    r = revocation
    digest = r.session_digest.hex() if r.session_digest else "-"
    return f"{schema} {node} {change_id} {r.user_id} {r.reason} {digest}"


async def announce(
    conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
    schema: str,
    node: str,
    revocation: Revocation,
    now: float,
) -> None:
    """Record ``revocation`` and tell every node, inside the caller's transaction: only a
    committed change is told, and one a listener missed is found in ``revocations``."""
    r = revocation
    change = await conn.fetchval(
        "INSERT INTO revocations (user_id, node, at, session_digest, reason)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING id",
        r.user_id,
        node,
        now,
        r.session_digest,
        r.reason,
    )
    await conn.execute("DELETE FROM revocations WHERE at < $1", now - CHANGES_KEPT_SECONDS)
    told = notice(schema, node, int(change), r)
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, told)


def parse_notice(payload: str) -> tuple[str, str, int, Revocation]:
    """``(schema, node, change_id, revocation)`` from a payload; ValueError when malformed."""
    schema, node, change, user_id, reason, session = payload.split(" ")
    digest = None if session == "-" else bytes.fromhex(session)
    return schema, node, int(change), Revocation(int(user_id), reason, digest)


Connect = Callable[[], Awaitable["asyncpg.Connection[asyncpg.Record]"]]


class RevocationListener:
    """Listens for ``schema``'s revocations made by nodes other than ``node``; ``connect``
    opens a fresh connection to the store's database."""

    def __init__(self, connect: Connect, *, schema: str, node: str) -> None:
        self._connect = connect
        self.schema = schema
        self.node = node
        self.retry = (0.2, 5.0)  # first and longest wait between reconnects, in seconds
        self.keepalive_seconds = 5.0  # the connection is probed this often
        self.conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._callbacks: list[Callable[[Revocation], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._seen: collections.deque[int] = collections.deque(maxlen=4096)
        self._last_change = 0

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def listening(self) -> bool:
        """True while the connection is up."""
        return self.conn is not None and not self.conn.is_closed()

    def add(self, callback: Callable[[Revocation], None]) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Connect and start listening; raises what connecting raises (nothing left open)."""
        try:
            closed = await self._listen()
            self._last_change = int(
                await self._live().fetchval("SELECT coalesce(max(id), 0) FROM revocations")
            )
        except BaseException:
            self._drop()
            raise
        self._task = asyncio.create_task(self._keep_listening(closed), name="pg-listener")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        self._drop()

    def _live(self) -> asyncpg.Connection[asyncpg.Record]:
        if self.conn is None:
            raise ConnectionError("the listener has no connection")
        return self.conn

    async def _listen(self) -> asyncio.Event:
        """A new connection LISTENing on the channel; the event is set when it closes."""
        conn = await self._connect()
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        self.conn = conn
        await conn.add_listener(CHANNEL, self._notified)
        return closed

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _keep_listening(self, closed: asyncio.Event) -> None:
        while True:
            await self._watch(closed)
            self._drop()
            log.warning("lost the PostgreSQL listener connection; reconnecting")
            delay = self.retry[0]
            while True:
                await asyncio.sleep(delay)
                try:
                    closed = await self._listen()
                    await self._catch_up()
                except Exception as exc:  # whatever it was, this task must go on trying
                    self._drop()
                    log.warning("cannot listen on PostgreSQL yet (%s); retrying", exc)
                    delay = min(delay * 2, self.retry[1])
                    continue
                log.warning("listening on PostgreSQL again")
                break

    async def _watch(self, closed: asyncio.Event) -> None:
        """Return once the connection is gone (closed, or no longer answering)."""
        while not closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.keepalive_seconds):
                    await closed.wait()
                    return
            try:
                await self._live().fetchval("SELECT 1", timeout=self.keepalive_seconds)
            except Exception:
                return

    async def _catch_up(self) -> None:
        """After a reconnect: tell what other nodes revoked while nobody was listening."""
        rows = await self._live().fetch(
            "SELECT id, user_id, reason, session_digest FROM revocations"
            " WHERE id > $1 AND node <> $2 ORDER BY id",
            self._last_change,
            self.node,
        )
        for change, user_id, reason, session in rows:
            self._changed(int(change), Revocation(int(user_id), reason, session))

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            schema, node, change_id, revocation = parse_notice(str(payload))
        except ValueError:
            log.warning("ignored a malformed notification on %s", CHANNEL)
            return
        if schema != self.schema or node == self.node:
            return  # another exchange's schema, or our own change (already handled locally)
        self._changed(change_id, revocation)

    def _changed(self, change_id: int, revocation: Revocation) -> None:
        if change_id in self._seen:
            return
        self._seen.append(change_id)
        self._last_change = max(self._last_change, change_id)
        for callback in self._callbacks:
            try:
                callback(revocation)
            except Exception:
                log.exception("revocation callback failed for user %d", revocation.user_id)
