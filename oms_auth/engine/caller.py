"""Who asks: the caller of an engine function, and what it may do (docs/rules.md, "Who may
start a reset" and "Sessions"; docs/rules.md, "Fresh proof for account-security changes").

The server builds a :class:`Caller` for each request from the connection that carries it (the
engine knows nothing of connections): the user as the store has it now, the session the request
came on, the password version that session was opened for, the key's permissions when the
session was opened with an API key, and when the connection itself last proved the password.

The rules a caller carries:

- Permissions: a session opened with an API key holds the key's permissions that the user still
  holds (an Operator's key made with ``[]`` has no Operator power); any other session holds the
  user's.
- Fresh proof: account-security changes act only for a caller whose connection proved the
  password (and second step) within ``fresh_auth_seconds``, or with the current password in the
  payload (:meth:`.sessions.Sessions.prove`). A connection that resumed a session by token, an
  HTTP call with an APToken and a key session never proved it.
- Authority where it is used: every write made for a caller carries :meth:`Caller.authority`,
  which the store re-checks in the write's own transaction (the session still exists, the
  password is still the session's version, the permission the decision rested on is still
  held); :func:`guarded` turns a gone authority into the caller's refusal. So a reset, a LogOut
  or a forced logoff racing a request leaves nothing of it behind, on any node.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import msgspec

from ..errors import NotAuthorized
from ..store import Authority, CallerGone, User
from .texts import AUTHORITY_GONE

__all__ = ["Caller", "guarded"]

T = TypeVar("T")


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """One request's caller (see the module). ``session`` is the digest of its session's
    token; ``key_permissions`` is None unless the session was opened with an API key."""

    user: User
    session: bytes
    password_version: int
    key_permissions: frozenset[str] | None = None
    # When this connection proved the password (and second step), and when a TOTP code was
    # last accepted on it (a login's second step, or an enrolment's first code).
    proved_at: float | None = None
    verified_at: float | None = None
    # False for a request alone on its connection (one HTTP call): nothing that must follow on
    # the same connection (an enrolment's first code) can.
    lasting: bool = True

    def __repr__(self) -> str:
        return f"Caller(user={self.user!r}, via_api_key={self.via_api_key})"

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def via_api_key(self) -> bool:
        return self.key_permissions is not None

    @property
    def permissions(self) -> frozenset[str]:
        """What the caller may do: the user's permissions, within its key's on a key session."""
        held = self.user.permissions
        return held if self.key_permissions is None else held & self.key_permissions

    def proved_within(self, seconds: float, now: float) -> bool:
        """This connection proved the password less than ``seconds`` ago."""
        return self.proved_at is not None and now - self.proved_at < seconds

    def verified_within(self, seconds: float, now: float) -> bool:
        """A TOTP code was accepted on this connection less than ``seconds`` ago."""
        return self.verified_at is not None and now - self.verified_at < seconds

    def authority(self, permission: str | None = None) -> Authority:
        """What a write made for this caller re-checks in its transaction; ``permission``:
        the one the decision rested on (None: being logged in on this session is enough)."""
        return Authority(
            user_id=self.user.id,
            session=self.session,
            password_version=self.password_version,
            permission=permission,
        )


async def guarded(write: Awaitable[T]) -> T:
    """A store write made for a caller: its result, or NotAuthorized when the caller's
    authority was gone by the time the write's transaction looked (nothing was written)."""
    try:
        return await write
    except CallerGone:
        raise NotAuthorized(AUTHORITY_GONE) from None
