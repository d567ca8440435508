"""The engine on its own: a real store (both kinds), real Argon2id at its lowest cost, an
injected clock and an Events recorder; no socket, no server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pyotp
import pytest

from oms_auth.app import build_deps
from oms_auth.engine.caller import Caller
from oms_auth.engine.deps import Deps
from oms_auth.engine.sessions import LoginState, Sessions

from ..helpers import PASSWORD, Clock, settings_for


class Told:
    """Events as the engine tells them, kept in order (the engine's one way up)."""

    def __init__(self) -> None:
        self.counts: list[str] = []
        self.ended: list[tuple[int, str]] = []
        self.revoked: list[tuple[bytes, str]] = []
        self.mail = 0

    def count(self, name: str) -> None:
        self.counts.append(name)

    def sessions_ended(self, user_id: int, reason: str) -> None:
        self.ended.append((user_id, reason))

    def session_revoked(self, token_digest: bytes, reason: str) -> None:
        self.revoked.append((token_digest, reason))

    def mail_queued(self) -> None:
        self.mail += 1


@pytest.fixture
async def deps(tmp_path: Path, clock: Clock, db: str) -> AsyncIterator[Deps]:
    d = await build_deps(settings_for(tmp_path, db=db), clock)
    d.events = Told()
    try:
        yield d
    finally:
        await d.store.close()
        d.hasher.close()


@pytest.fixture
def told(deps: Deps) -> Told:
    assert isinstance(deps.events, Told)
    return deps.events


async def caller(
    deps: Deps, username: str, *, totp_secret: str | None = None, source: str = "10.0.0.9"
) -> Caller:
    """A caller who has just logged in with its password (and, with ``totp_secret``, the
    current code) on its connection: a real session in the store, fresh proof."""
    sessions = Sessions(deps, delay_unit=0)
    login = await sessions.authenticate(username, PASSWORD, source)
    if login.state is LoginState.NEEDS_2FA:
        assert totp_secret is not None, "the user has TOTP: give its secret"
        code = pyotp.TOTP(totp_secret).at(deps.clock())
        login = await sessions.second_factor(login.pending, code, source)
    assert login.state is LoginState.AUTHENTICATED, login.message
    assert login.user is not None and login.token_digest is not None
    now = deps.clock()
    return Caller(
        user=login.user,
        session=login.token_digest,
        password_version=login.user.password_version,
        proved_at=now,
        verified_at=now if totp_secret is not None else None,
    )


def as_key_session(c: Caller, permissions: tuple[str, ...] = ()) -> Caller:
    """The same user and session, as a session opened with a key of these permissions."""
    return msgspec.structs.replace(
        c, key_permissions=frozenset(permissions), proved_at=None, verified_at=None
    )
