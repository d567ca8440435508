"""Who is logged in where: the one place a connection's login state changes.

Every connection authenticated by a session is indexed by that session and by its user, and
only this module changes a connection's login state, so the indexes always agree with the
connections (two logins racing on one connection leave it indexed as whichever finished last).
When a session ends for a reason other than the connection's own LogOut, each connection that
holds it is sent a ``LogoutEvent`` (m=3) first, then treated as logged off (docs/protocol.md,
"Events").

A connection's login, as a table (``_ON_OUTCOME``): what each outcome of a login step does to
the session the connection holds and to its pending second step.

    outcome          session held                pending second step
    AUTHENTICATED    the new session             none
    NEEDS_2FA        unchanged                   the outcome's (a new one, or the same)
    FAILED           unchanged                   none
    (log off)        none                        none

A new session also sets what the connection itself proved, from the login's
:class:`~oms_auth.engine.sessions.Proof` (``_PROVED``): when it proved the password, and when a TOTP
code was accepted on it. A session resumed by token or opened with an API key proved nothing here
(fresh proof, docs/rules.md, "Fresh proof for account-security changes"),
and carries the key's permissions when it is a key's. The
engine reads these through the :class:`~oms_auth.engine.caller.Caller` the server builds from the
connection; they change only here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from protocol.frame import encode_event
from protocol.messages import LogoutEvent

from ..engine.accounts import Enrolment
from ..engine.sessions import Login, LoginState, Proof
from ..store import Revocation, User
from .connection import Conn

__all__ = ["Registry"]

K = TypeVar("K")


class _Effect(NamedTuple):
    new_session: bool
    keeps_pending: bool


_ON_OUTCOME = {
    LoginState.AUTHENTICATED: _Effect(new_session=True, keeps_pending=False),
    LoginState.NEEDS_2FA: _Effect(new_session=False, keeps_pending=True),
    LoginState.FAILED: _Effect(new_session=False, keeps_pending=False),
}


class _Proved(NamedTuple):
    password: bool  # the connection proved the password now
    code: bool  # and a TOTP code


_PROVED = {
    Proof.NONE: _Proved(password=False, code=False),
    Proof.PASSWORD: _Proved(password=True, code=False),
    Proof.PASSWORD_AND_CODE: _Proved(password=True, code=True),
}


class Registry:
    """Connections by session digest and by user id."""

    def __init__(self, send: Callable[[Conn, bytes], Awaitable[None]]) -> None:
        self._send = send
        self.by_session: dict[bytes, set[Conn]] = {}
        self.by_user: dict[int, set[Conn]] = {}
        self._sending: set[asyncio.Task[Any]] = set()

    def apply(self, conn: Conn, login: Login, now: float) -> None:
        """Carry a login step's outcome onto the connection (the table above)."""
        effect = _ON_OUTCOME[login.state]
        if effect.new_session:
            assert login.user is not None and login.token_digest is not None
            self.log_in(conn, login, now)
        conn.pending = login.pending if effect.keeps_pending else None

    def log_in(self, conn: Conn, login: Login, now: float) -> None:
        """The connection holds the login's new session from now on."""
        if conn.closed:  # a login that finished after its connection went: nothing to index
            return
        user, token_digest = login.user, login.token_digest
        assert user is not None and token_digest is not None
        proved = _PROVED[login.proof]
        self._untrack(conn)
        conn.user, conn.token_digest, conn.pending = user, token_digest, None
        conn.token, conn.enrolment = login.token, None
        conn.key_permissions = login.key_permissions
        conn.proved_at = now if proved.password else None
        conn.verified_at = now if proved.code else None
        conn.last_activity = conn.last_written = now
        self.by_session.setdefault(token_digest, set()).add(conn)
        self.by_user.setdefault(user.id, set()).add(conn)

    def enrolling(self, conn: Conn, enrolment: Enrolment) -> None:
        """An EnableGoogle2FA waits for its first code on this connection."""
        if conn.user is not None and conn.user.id == enrolment.user_id:
            conn.enrolment = enrolment

    def enrolled(self, conn: Conn, user: User, now: float) -> None:
        """The enrolment's first code was accepted: TOTP is on for ``user`` (the connection's
        user, as it is now), and a code was accepted on this connection."""
        if conn.user is None or conn.user.id != user.id:
            return  # logged off (or in as another) meanwhile
        conn.enrolment = None
        conn.user, conn.verified_at = user, now

    def spent_verification(self, conn: Conn) -> None:
        """A Disable2FA used the connection's recent code: the next needs a code again."""
        conn.verified_at = None

    def log_off(self, conn: Conn, reason: str | None = None) -> None:
        """End the connection's login; with a ``reason``, tell the client first (the event is
        queued before anything this connection answers later)."""
        # Events go to WebSocket connections only: an HTTP request's connection (kept alive for
        # the client's next request) never did a WebSocket handshake to send one on.
        if reason is not None and conn.user is not None and conn.lasting:
            self._notify(conn, reason)
        self._forget(conn)

    async def tell_and_log_off(self, conn: Conn, reason: str) -> None:
        """From inside a request: the event is sent before the request goes on, so its
        answer can never overtake it."""
        if conn.user is not None and conn.lasting:
            await self._send(conn, encode_event("LogoutEvent", LogoutEvent(reason)))
        self._forget(conn)

    def end_session(self, token_digest: bytes, reason: str, *, keep: Conn | None = None) -> None:
        """Log off every connection holding this session (but ``keep``, which ends it itself)."""
        self._end(self.by_session.get(token_digest, ()), reason, keep)

    def end_user(self, user_id: int, reason: str) -> None:
        """Log off every connection of this user (a password change, a forced logoff)."""
        self._end(self.by_user.get(user_id, ()), reason, None)

    def revoked(self, revocation: Revocation) -> None:
        """A revocation another node made."""
        if revocation.session_digest is not None:
            self.end_session(revocation.session_digest, revocation.reason)
        else:
            self.end_user(revocation.user_id, revocation.reason)

    async def flush(self) -> None:
        """Wait until every LogoutEvent queued so far has been sent (shutdown, tests)."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _end(self, conns: Iterable[Conn], reason: str, keep: Conn | None) -> None:
        for conn in list(conns):
            if conn is not keep:
                self.log_off(conn, reason)

    def _notify(self, conn: Conn, reason: str) -> None:
        # Queued now, before any later answer on this connection is (tasks start in order).
        frame = encode_event("LogoutEvent", LogoutEvent(reason))
        task = asyncio.ensure_future(self._send(conn, frame))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _forget(self, conn: Conn) -> None:
        self._untrack(conn)
        conn.user = conn.token_digest = conn.pending = conn.token = None
        conn.enrolment = conn.verified_at = conn.proved_at = None
        conn.key_permissions = None

    def _untrack(self, conn: Conn) -> None:
        if conn.token_digest is not None:
            _discard(self.by_session, conn.token_digest, conn)
        if conn.user is not None:
            _discard(self.by_user, conn.user.id, conn)


def _discard(index: dict[K, set[Conn]], key: K, conn: Conn) -> None:
    conns = index.get(key)
    if conns is not None:
        conns.discard(conn)
        if not conns:
            del index[key]
