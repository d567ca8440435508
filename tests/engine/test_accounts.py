"""engine.accounts and Store.change_account, directly: each account change is one transaction
that re-checks what it was decided on (the password version, the TOTP step, TOTP's state) and
writes its audit row and notice with it, or nothing."""

from __future__ import annotations

import msgspec
import pyotp
import pytest

from oms_auth.engine.accounts import Accounts
from oms_auth.engine.deps import Deps
from oms_auth.engine.sessions import Sessions
from oms_auth.errors import NotAuthorized, NotSupported, OperationFailed
from oms_auth.store import AccountChange, AuditEntry, MailItem, Outcome, User

from ..helpers import PASSWORD, Clock, make_user
from ..store_helpers import login
from .conftest import Told, as_key_session, caller

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"


async def user(deps: Deps, uid: int) -> User:
    found = await deps.store.user_by_id(uid)
    assert found is not None
    return found


def change(u: User, **fields: object) -> AccountChange:
    return AccountChange(
        user_id=u.id,
        password_version=u.password_version,
        audit=AuditEntry(action="questions-set", target_id=u.id),
        mail=MailItem(kind="questions-set", recipient=u.email, user_id=u.id, public={"at": 0}),
        **fields,  # type: ignore[arg-type]
    )


async def written(deps: Deps, uid: int) -> tuple[int, int]:
    """Audit rows and queued messages about the user."""
    rows = [r for r in await deps.store.audit_rows(limit=None) if r.target_id == uid]
    mail = (await deps.store.mail_counts()).get("queued", 0)
    return len(rows), mail


async def test_a_change_decided_on_an_old_password_writes_nothing(deps: Deps) -> None:
    uid = await make_user(deps, "trader")
    before = await user(deps, uid)
    stale = msgspec.structs.replace(
        change(before, questions=(("Q?", "hash"),)), password_version=before.password_version + 1
    )
    counts = await written(deps, uid)
    assert await deps.store.change_account(stale, 0) is Outcome.STALE
    assert await deps.store.security_questions(uid) == []
    assert await written(deps, uid) == counts
    assert await deps.store.change_account(change(before, questions=(("Q?", "h"),)), 0) is (
        Outcome.DONE
    )
    assert [q.question for q in await deps.store.security_questions(uid)] == ["Q?"]
    assert await written(deps, uid) == (counts[0] + 1, counts[1] + 1)


async def test_a_totp_step_is_taken_once_and_totp_only_turned_from_the_other_state(
    deps: Deps,
) -> None:
    uid = await make_user(deps, "trader")
    u = await user(deps, uid)
    on = change(u, set_totp=True, totp_sealed=b"sealed", totp_step=100)
    assert await deps.store.change_account(on, 0) is Outcome.DONE
    again = change(u, set_totp=True, totp_sealed=b"other", totp_step=101)
    assert await deps.store.change_account(again, 0) is Outcome.INVALID
    replay = change(u, set_totp=True, totp_sealed=None, totp_step=100)
    assert await deps.store.change_account(replay, 0) is Outcome.REPLAYED
    assert (await user(deps, uid)).totp_sealed == b"sealed"
    off = change(u, set_totp=True, totp_sealed=None, totp_step=101)
    assert await deps.store.change_account(off, 0) is Outcome.DONE
    after = await user(deps, uid)
    assert after.totp_sealed is None and after.totp_last_step == 101


async def test_a_forced_logoff_ends_every_session_and_pending_step(deps: Deps) -> None:
    uid = await make_user(deps, "trader")
    u = await user(deps, uid)
    for n in range(3):
        await login(deps.store, bytes([n]) * 32, uid, 0, u.password_version)
    await deps.store.begin_second_step(b"p" * 32, uid, u.password_version, 0)
    ended = change(u, end_sessions="ForcedLogoff")
    assert await deps.store.change_account(ended, 1) is Outcome.DONE
    for n in range(3):
        assert await deps.store.session(bytes([n]) * 32) is None
    assert await deps.store.second_step_attempt(b"p" * 32, 1, 300, 5) is None


async def test_questions_checked_against_an_older_password_version_are_not_written(
    deps: Deps, clock: Clock, told: Told
) -> None:
    uid = await make_user(deps, "trader")
    accounts = Accounts(Sessions(deps, delay_unit=0))
    me = await caller(deps, "trader")
    await accounts.set_questions(me, None, PASSWORD, [{"Question": "Q?", "Answer": "A"}], "test")
    assert "questions_set" in told.counts and told.mail == 1
    # A caller whose session was opened for an older password: the write refuses it.
    stale = msgspec.structs.replace(me, password_version=me.password_version - 1)
    with pytest.raises(NotAuthorized, match="nothing was changed"):
        await accounts.set_questions(
            stale, None, PASSWORD, [{"Question": "Q2?", "Answer": "B"}], "test"
        )
    assert [q.question for q in await deps.store.security_questions(uid)] == ["Q?"]


async def test_enabling_needs_totp_off_and_a_key_session_cannot(deps: Deps, clock: Clock) -> None:
    await make_user(deps, "trader", totp_secret=SECRET)
    accounts = Accounts(Sessions(deps, delay_unit=0))
    me = await caller(deps, "trader", totp_secret=SECRET)
    with pytest.raises(OperationFailed, match="already enabled"):
        await accounts.enable_totp(me, None, "test")
    with pytest.raises(NotAuthorized, match="API key"):
        await accounts.enable_totp(as_key_session(me), None, "test")
    clock.advance(30)  # the login took this step's code
    await accounts.disable_totp(me, None, pyotp.TOTP(SECRET).at(clock.now), "test")
    new = await accounts.enable_totp(await caller(deps, "trader"), None, "test")
    assert new.uri.startswith("otpauth://totp/") and "<secret" in repr(new)
    assert new.manual_code not in repr(new.enrolment)


async def test_enabling_needs_a_connection_its_first_code_can_follow_on(deps: Deps) -> None:
    await make_user(deps, "trader")
    accounts = Accounts(Sessions(deps, delay_unit=0))
    alone = msgspec.structs.replace(await caller(deps, "trader"), lasting=False)  # one HTTP call
    with pytest.raises(NotSupported, match="needs a WebSocket connection"):
        await accounts.enable_totp(alone, None, "test")
    with pytest.raises(NotAuthorized, match="Not logged in"):
        await accounts.enable_totp(None, None, "test")


async def test_locked_users_are_listed_with_when_their_lock_began_and_ends(
    deps: Deps, clock: Clock
) -> None:
    await make_user(deps, "op", permissions=["Operator"], accounts=[1])
    uid = await make_user(deps, "trader")
    accounts = Accounts(Sessions(deps, delay_unit=0))
    until = clock.now + deps.settings.lockout_seconds
    await deps.store.set_lock(uid, until, AuditEntry(action="locked", target_id=uid))
    [lock] = await accounts.locked_users(await caller(deps, "op"))
    assert (lock.user.id, lock.since, lock.until) == (uid, clock.now, until)
