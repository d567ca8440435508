"""engine.sessions on its own (docs/rules.md, "Logins", "TOTP", "Sessions")."""

from __future__ import annotations

import asyncio

import pyotp
import pytest

from oms_auth.engine.deps import Deps
from oms_auth.engine.sessions import LoginState, Sessions
from oms_auth.engine.texts import MUST_SET_QUESTIONS
from oms_auth.errors import InvalidValue, NotAuthorized
from oms_auth.store import MailItem

from ..helpers import PASSWORD, Clock, make_user
from ..store_helpers import issue, redeem
from .conftest import Told, caller

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"


@pytest.fixture
def sessions(deps: Deps) -> Sessions:
    return Sessions(deps, delay_unit=0)


async def test_the_right_password_opens_a_session_and_a_wrong_one_does_not(
    deps: Deps, sessions: Sessions, told: Told
) -> None:
    await make_user(deps, "alice")
    ok = await sessions.authenticate("ALICE ", PASSWORD, "10.0.0.1")
    assert ok.state is LoginState.AUTHENTICATED and ok.token
    assert ok.token_digest is not None and await deps.store.session(ok.token_digest)
    bad = await sessions.authenticate("alice", "nope", "10.0.0.1")
    assert (bad.state, bad.message) == (LoginState.FAILED, "Invalid username or password")
    assert told.counts == ["login:ok", "login:failed"]


@pytest.mark.parametrize(("username", "password"), [(None, "x"), ("  ", "x"), ("alice", "")])
async def test_a_missing_username_or_password_is_invalid(
    sessions: Sessions, username: str | None, password: str
) -> None:
    with pytest.raises(InvalidValue):
        await sessions.authenticate(username, password, "10.0.0.1")


async def test_simultaneous_guesses_check_at_most_the_limit(deps: Deps, sessions: Sessions) -> None:
    await make_user(deps, "alice")
    before = deps.hasher.checks
    logins = await asyncio.gather(
        *(sessions.authenticate("alice", f"guess{n}", "10.0.0.1") for n in range(40))
    )
    assert deps.hasher.checks - before == deps.settings.login_failures_per_user
    refused = [x for x in logins if x.message == "Too many failed login attempts; try again later"]
    assert len(refused) == 40 - deps.settings.login_failures_per_user


async def test_a_second_step_ends_when_the_password_changes(
    deps: Deps, sessions: Sessions, clock: Clock
) -> None:
    uid = await make_user(deps, "totp", totp_secret=SECRET)
    step = await sessions.authenticate("totp", PASSWORD, "10.0.0.1")
    assert step.state is LoginState.NEEDS_2FA and step.pending
    user = await deps.store.user_by_id(uid)
    assert user is not None
    await issue(deps.store, uid, b"c" * 32, clock.now, clock.now + 60, _mail(uid))
    await redeem(deps.store, uid, b"c" * 32, "new-hash", clock.now, _mail(uid))
    late = await sessions.second_factor(step.pending, pyotp.TOTP(SECRET).at(clock.now), "x")
    assert late.state is LoginState.FAILED


async def test_logout_revokes_the_session_and_tells_who_holds_it(
    deps: Deps, sessions: Sessions, told: Told
) -> None:
    await make_user(deps, "alice")
    alice = await caller(deps, "alice")
    assert await sessions.logout(alice, "10.0.0.1") is None  # nothing more to tell alice
    assert await deps.store.session(alice.session) is None
    assert told.revoked == [(alice.session, "LoggedOutElsewhere")]


async def test_logout_needs_a_login_and_tells_a_master_user_to_set_its_questions(
    deps: Deps, sessions: Sessions
) -> None:
    with pytest.raises(NotAuthorized, match="Not logged in"):
        await sessions.logout(None, "10.0.0.1")
    await make_user(deps, "boss", master=True)
    boss = await caller(deps, "boss")
    assert await sessions.logout(boss, "10.0.0.1") == MUST_SET_QUESTIONS
    assert await deps.store.session(boss.session) is None  # logged out all the same


def _mail(uid: int) -> MailItem:
    return MailItem(kind="password-changed", recipient="x@example.test", user_id=uid, public={})
