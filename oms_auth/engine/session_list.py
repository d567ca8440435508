"""Sessions a user can see and end (docs/protocol.md, "Sessions and devices"):
GetUserSessions, LogOutSession, LogOutOtherSessions.

- A session is shown by an opaque ``SessionId``: an HMAC of its token's digest keyed with the
  devices key (derived from the service key), never the token nor its digest; the store holds
  no id to steal.
- Ending sessions is one transaction with its audit row, re-checking the caller's session in
  it; every session ended is logged off on this node here and on other nodes by the store's
  revocation notice, each with LogoutEvent ``LoggedOutElsewhere``.
- LogOutOtherSessions needs fresh proof (docs/rules.md, "Fresh proof for account-security
  changes").
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from protocol.messages import LogoutReason

from ..errors import InvalidValue, NotAuthorized, NotFound
from ..store import AuditEntry
from .caller import Caller, guarded
from .sessions import Sessions
from .texts import NOT_LOGGED_IN

__all__ = ["SessionList", "SessionView", "session_id", "INVALID_SESSION_ID", "NO_SUCH_SESSION"]

INVALID_SESSION_ID = "Invalid value provided for SessionId"
NO_SUCH_SESSION = "No such session"
_ID_BYTES = 16


class SessionView(msgspec.Struct, frozen=True):
    """One session of GetUserSessions."""

    session_id: str
    device_name: str
    address: str
    created_at: float
    last_seen: float
    current: bool
    via_api_key: bool


def session_id(key: bytes, digest: bytes) -> str:
    """The opaque id a session is shown by (see the module)."""
    return hmac.new(key, b"session\x00" + digest, hashlib.sha256).digest()[:_ID_BYTES].hex()


class SessionList:
    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.deps = sessions.deps

    async def shown(self, caller: Caller | None) -> list[SessionView]:
        """GetUserSessions: the caller's live sessions, oldest first."""
        me = _logged_in(caller)
        key = self.deps.devices_key
        return [
            SessionView(
                session_id(key, s.digest),
                s.device_name,
                s.address,
                s.created_at,
                s.last_seen,
                s.digest == me.session,
                s.api_key is not None,
            )
            for s in await self.deps.store.user_sessions(me.id)
            if not self.sessions.expired(s.last_seen)  # (expired: gone at its next use)
        ]

    async def log_out_one(self, caller: Caller | None, wanted: object, source: str) -> None:
        """LogOutSession: one of the caller's own sessions ends (104 when it has none by that
        id: another user's look the same)."""
        me = _logged_in(caller)
        if not isinstance(wanted, str) or not wanted.strip():
            raise InvalidValue(INVALID_SESSION_ID)
        key = self.deps.devices_key
        found = [
            s.digest
            for s in await self.deps.store.user_sessions(me.id)
            if hmac.compare_digest(session_id(key, s.digest), wanted.strip().lower())
        ]
        if not found:
            raise NotFound(NO_SUCH_SESSION)
        ended = await self._end(me, "session-logged-out", source, only=found[0])
        if not ended:  # ended meanwhile (expired, logged out on its own connection)
            raise NotFound(NO_SUCH_SESSION)

    async def log_out_others(self, caller: Caller | None, password: str | None, source: str) -> int:
        """LogOutOtherSessions (fresh proof): every session of the caller's but its own ends.
        How many did."""
        me = _logged_in(caller)
        await self.sessions.prove(me, password, source)
        return len(await self._end(me, "other-sessions-logged-out", source, keep=me.session))

    async def _end(
        self,
        me: Caller,
        action: str,
        source: str,
        *,
        only: bytes | None = None,
        keep: bytes | None = None,
    ) -> list[bytes]:
        d, reason = self.deps, LogoutReason.LOGGED_OUT_ELSEWHERE
        entry = AuditEntry(action=action, actor_id=me.id, target_id=me.id, source=source)
        ended = await guarded(
            d.store.end_sessions(
                me.id, reason, entry, only=only, keep=keep, authority=me.authority()
            )
        )
        for digest in ended:
            d.events.session_revoked(digest, reason)
        d.events.count(action)
        return ended


def _logged_in(caller: Caller | None) -> Caller:
    if caller is None:
        raise NotAuthorized(NOT_LOGGED_IN)
    return caller
