"""Logins and sessions: AuthenticateUser, Authenticate2FA, WebAuthenticateUser, LogOut.

A failed login says "Invalid username or password" whether the user exists or not, and costs the
same: a missing user is verified against a decoy hash. Failed logins are counted per submitted
username and per source address; past a few, answers slow down (a growing delay), past the limit
they are refused without checking the password. They never lock the reset.
"""

from __future__ import annotations

import asyncio
from enum import Enum

import msgspec

from ..crypto import digest, new_token
from ..store import AuditEntry, User, username_key
from . import totp
from .deps import Deps
from .texts import (
    ACCOUNT_LOCKED,
    CONTACT_SUPPORT,
    INVALID_2FA_CODE,
    INVALID_LOGIN,
    INVALID_SESSION,
    NO_PENDING_2FA,
    TOO_MANY_LOGINS,
    federated_refusal,
)

__all__ = ["LoginState", "Login", "Sessions"]

LOGIN_FAILURE_USER = "login-failure-user"
LOGIN_FAILURE_SOURCE = "login-failure-source"
# A session's last_seen is written at most this often: activity is still tracked to the
# minute, and a busy connection does not write to the store on every request.
TOUCH_EVERY = 60.0


class LoginState(Enum):
    AUTHENTICATED = "authenticated"
    NEEDS_2FA = "needs-2fa"
    FAILED = "failed"


class Login(msgspec.Struct, frozen=True):
    """The outcome of a login step. ``token`` is a bearer secret: never log it."""

    state: LoginState
    user: User | None = None
    token: str | None = None
    locked: bool = False
    message: str | None = None

    def __repr__(self) -> str:
        return f"Login(state={self.state}, user={self.user!r})"

    @property
    def token_digest(self) -> bytes | None:
        return digest(self.token) if self.token else None


class Sessions:
    """The login and session rules."""

    def __init__(self, deps: Deps, *, delay_unit: float = 0.25) -> None:
        self.deps = deps
        # Seconds of delay per doubling once failures pile up; tests set 0.
        self.delay_unit = delay_unit

    async def authenticate(self, username: str | None, password: str | None, source: str) -> Login:
        d, s = self.deps, self.deps.settings
        now = d.clock()
        name_key = username_key(username or "")
        since = now - s.login_window_seconds
        failures = await d.store.count_events(LOGIN_FAILURE_USER, name_key, since)
        from_source = await d.store.count_events(LOGIN_FAILURE_SOURCE, source, since)
        if failures >= s.login_failures_per_user or from_source >= s.login_failures_per_source:
            return Login(LoginState.FAILED, message=TOO_MANY_LOGINS)
        await self._slow_down(failures)
        user = await d.store.user_by_name(username) if username else None
        ok = await d.hasher.verify(user.password_hash if user else None, password or "")
        if not ok or user is None:
            await self._failed(name_key, source, now, user)
            return Login(LoginState.FAILED, message=INVALID_LOGIN)
        # From here the caller has proven the password: telling it why it cannot log in
        # reveals nothing it does not already know.
        refusal = self._refusal(user, now)
        if refusal is not None:
            return refusal
        if user.uses_totp:
            return Login(LoginState.NEEDS_2FA, user=user)
        return await self._open_session(user, now, source)

    async def second_factor(
        self, user_id: int | None, code: str | int | None, source: str
    ) -> Login:
        """Authenticate2FA: the connection must have passed the password step."""
        d = self.deps
        if user_id is None:
            return Login(LoginState.FAILED, message=NO_PENDING_2FA)
        user = await d.store.user_by_id(user_id)
        now = d.clock()
        if user is None or user.totp_sealed is None:
            return Login(LoginState.FAILED, message=NO_PENDING_2FA)
        refusal = self._refusal(user, now)
        if refusal is not None:
            return refusal
        given = totp.normalize_code(code)
        secret = totp.open_secret(d.sealer, user.id, user.totp_sealed)
        if given is None or not totp.verify(secret, given, now):
            await self._failed(username_key(user.username), source, now, user)
            return Login(LoginState.NEEDS_2FA, user=user, message=INVALID_2FA_CODE)
        return await self._open_session(user, now, source)

    async def resume(self, token: str | None) -> Login:
        """WebAuthenticateUser: a live session's token logs this connection in."""
        d = self.deps
        if not token:
            return Login(LoginState.FAILED, message=INVALID_SESSION)
        key = digest(token)
        session = await d.store.session(key)
        now = d.clock()
        if session is None:
            return Login(LoginState.FAILED, message=INVALID_SESSION)
        if self.expired(session.last_seen, now):
            await d.store.revoke_session(key)
            return Login(LoginState.FAILED, message=INVALID_SESSION)
        user = await d.store.user_by_id(session.user_id)
        if user is None:
            return Login(LoginState.FAILED, message=INVALID_SESSION)
        refusal = self._refusal(user, now)
        if refusal is not None:
            return refusal
        await d.store.touch_session(key, now)
        return Login(LoginState.AUTHENTICATED, user=user, token=token)

    def expired(self, last_seen: float, now: float | None = None) -> bool:
        now = self.deps.clock() if now is None else now
        return now - last_seen >= self.deps.settings.session_idle_seconds

    async def touch(self, token_digest: bytes, last_written: float) -> float | None:
        """Record activity on a session; returns when it was last written to the store, or
        None when the session is gone (logged out or revoked on another connection or node)."""
        now = self.deps.clock()
        if now - last_written >= TOUCH_EVERY:
            alive = await self.deps.store.touch_session(token_digest, now)
            return now if alive else None
        return last_written

    async def logout(self, token_digest: bytes, user: User, source: str) -> None:
        d = self.deps
        await d.store.revoke_session(token_digest)
        await d.store.audit(
            [AuditEntry(action="logout", actor_id=user.id, target_id=user.id, source=source)],
            d.clock(),
        )

    # -- helpers ------------------------------------------------------------------------------

    def _refusal(self, user: User, now: float) -> Login | None:
        if user.locked_until is not None and user.locked_until > now:
            return Login(LoginState.FAILED, user=None, locked=True, message=ACCOUNT_LOCKED)
        if not user.active:
            return Login(LoginState.FAILED, message=CONTACT_SUPPORT)
        federated = federated_refusal(user.auth_source)
        if federated is not None:
            return Login(LoginState.FAILED, message=federated)
        return None

    async def _open_session(self, user: User, now: float, source: str) -> Login:
        d = self.deps
        token = new_token()
        await d.store.create_session(digest(token), user.id, now)
        await d.store.record_login(user.id, now)
        await d.store.clear_events(LOGIN_FAILURE_USER, username_key(user.username))
        await d.store.audit(
            [AuditEntry(action="login", actor_id=user.id, target_id=user.id, source=source)], now
        )
        return Login(LoginState.AUTHENTICATED, user=user, token=token)

    async def _failed(self, name_key: str, source: str, now: float, user: User | None) -> None:
        d = self.deps
        await d.store.add_event(LOGIN_FAILURE_USER, name_key, now)
        await d.store.add_event(LOGIN_FAILURE_SOURCE, source, now)
        await d.store.audit(
            [
                AuditEntry(
                    action="login-failed",
                    target_id=user.id if user else None,
                    target_name=name_key[:200],
                    source=source,
                )
            ],
            now,
        )

    async def _slow_down(self, failures: int) -> None:
        # Three free tries, then 0.25 s, 0.5 s, 1 s ... capped at 4 s.
        if failures >= 3 and self.delay_unit > 0:
            await asyncio.sleep(min(self.delay_unit * 2 ** (failures - 3), 4.0))
