"""engine.caller and the stores directly, on both stores: a write made for a caller re-checks the
caller's authority in its own transaction (its session, the password version the session was
opened for, the permission the decision rested on) and writes nothing once it is gone. The
decision is taken first, the authority goes, then the write runs: the ordering a race over
sockets can only sometimes hit (tests/test_authority.py runs those races)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pyotp
import pytest

from oms_auth.crypto import mail_context
from oms_auth.engine import totp
from oms_auth.engine.accounts import Accounts
from oms_auth.engine.apikeys import ApiKeys
from oms_auth.engine.caller import Caller
from oms_auth.engine.deps import Deps
from oms_auth.engine.reset import Resets
from oms_auth.engine.sessions import Sessions
from oms_auth.errors import NotAuthorized
from oms_auth.store import ApiKey, AuditEntry, CallerGone

from ..helpers import PASSWORD, Clock, make_user, sql
from .conftest import caller

GONE = "Your session ended or lost the permission this needs meanwhile; nothing was changed"
NEW = "Fresh-Start42"
QUESTIONS = [{"Question": "Q?", "Answer": "A"}]


class World(msgspec.Struct):
    deps: Deps
    sessions: Sessions
    accounts: Accounts
    keys: ApiKeys
    resets: Resets
    victim: int
    victim_session: bytes  # the victim's live session (a forced logoff would end it)


@pytest.fixture
async def w(deps: Deps, clock: Clock) -> World:
    sessions = Sessions(deps, delay_unit=0)
    await make_user(deps, "op", permissions=["Operator", "Trading"], accounts=[10])
    victim = await make_user(deps, "victim", permissions=["Trading"], accounts=[10])
    session = (await caller(deps, "victim")).session
    await deps.store.set_lock(victim, clock.now + 600, AuditEntry(action="locked"))
    accounts, keys = Accounts(sessions), ApiKeys(sessions)
    return World(deps, sessions, accounts, keys, Resets(deps), victim, session)


def operator_writes(w: World, op: Caller) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each write an Operator makes for another user, decided on ``op``."""
    return {
        "CreateUser": lambda: w.accounts.create_user(
            op, "newbie", "newbie@example.test", None, None, "x"
        ),
        "ForceUserLogoff": lambda: w.accounts.force_logoff(op, w.victim, None, "x"),
        "UnlockUser": lambda: w.resets.unlock(op, w.victim, "x"),
        "ResetPassword": lambda: w.resets.request(op, "victim", "x"),
        "AddUserAPIKey": lambda: w.keys.add(op, w.victim, [], "x"),
    }


async def nothing_written_for(w: World) -> None:
    d = w.deps
    assert await d.store.user_by_name("newbie") is None
    assert await d.store.session(w.victim_session) is not None  # not logged off
    victim = await d.store.user_by_id(w.victim)
    assert victim is not None and victim.locked(d.clock())  # still locked
    assert await d.store.api_keys(w.victim) == []
    codes = await sql(d.settings.db, "SELECT count(*) FROM reset_codes WHERE user_id = ?", w.victim)
    assert codes == [(0,)]


async def test_an_operators_writes_write_nothing_once_its_session_has_ended(w: World) -> None:
    op = await caller(w.deps, "op")
    await w.sessions.logout(op, "x")
    for write in operator_writes(w, op).values():
        with pytest.raises(NotAuthorized, match=GONE):
            await write()
        await nothing_written_for(w)


async def test_an_operators_writes_write_nothing_once_it_lost_the_operator_permission(
    w: World,
) -> None:
    op = await caller(w.deps, "op")
    await sql(
        w.deps.settings.db,
        "DELETE FROM user_permissions WHERE user_id = ? AND permission = 'Operator'",
        op.id,
    )
    # (op also holds Trading and shares an account with the victim, but its reset request was
    # decided on Operator: that is what the write re-checks.)
    for write in operator_writes(w, op).values():
        with pytest.raises(NotAuthorized, match=GONE):
            await write()
    await nothing_written_for(w)


async def test_a_trading_users_reset_for_a_co_account_user_needs_trading_still_held(
    w: World,
) -> None:
    await make_user(w.deps, "mate", permissions=["Trading"], accounts=[10])
    mate = await caller(w.deps, "mate")
    await sql(w.deps.settings.db, "DELETE FROM user_permissions WHERE user_id = ?", mate.id)
    with pytest.raises(NotAuthorized, match=GONE):
        await w.resets.request(mate, "victim", "x")
    codes = await sql(w.deps.settings.db, "SELECT count(*) FROM reset_codes")
    assert codes == [(0,)]


async def reset_password(w: World, username: str) -> None:
    """A completed reset of ``username``'s password, asked for by itself."""
    d = w.deps
    target = await d.store.user_by_name(username)
    assert target is not None
    await w.resets.request(await caller(d, username), username, "x")
    rows = await sql(
        d.settings.db,
        "SELECT sealed FROM outbox WHERE user_id = ? AND kind = 'reset' ORDER BY id DESC",
        target.id,
    )
    code = msgspec.json.decode(d.sealer.open(rows[0][0], mail_context(target.id, "reset")))
    await w.resets.complete(
        user_id=target.id, password=NEW, code=code["code"], answer=None, totp_code=None, source="x"
    )


async def test_power_decided_before_a_reset_of_the_callers_password_is_not_granted_after_it(
    w: World,
) -> None:
    d = w.deps
    owner_id = await make_user(d, "owner")
    owner = await caller(d, "owner")
    enrolment = (await w.accounts.enable_totp(owner, None, "x")).enrolment
    await reset_password(w, "owner")
    with pytest.raises(NotAuthorized, match=GONE):
        await w.keys.add(owner, None, [], "x")
    with pytest.raises(NotAuthorized, match=GONE):
        await w.accounts.set_questions(owner, None, PASSWORD, QUESTIONS, "x")
    secret = totp.open_secret(d.sealer, owner_id, enrolment.sealed)
    with pytest.raises(NotAuthorized, match=GONE):
        await w.accounts.confirm_totp(owner, enrolment, pyotp.TOTP(secret).at(d.clock()), "x")
    after = await d.store.user_by_id(owner_id)
    assert after is not None and not after.uses_totp
    assert await d.store.api_keys(owner_id) == []
    assert await d.store.security_questions(owner_id) == []


async def test_a_store_write_with_a_gone_authority_raises_and_leaves_no_trace(w: World) -> None:
    d = w.deps
    op = await caller(d, "op")
    await w.sessions.logout(op, "x")
    before = len(await d.store.audit_rows(limit=None))
    record = ApiKey(
        key="k" * 32, user_id=w.victim, permissions=(), secret_sealed=b"s", created_at=0
    )
    entry = AuditEntry(action="api-key-added", target_id=w.victim)
    with pytest.raises(CallerGone):
        await d.store.add_api_key(record, 20, entry, authority=op.authority())
    assert await d.store.api_keys(w.victim) == []
    assert len(await d.store.audit_rows(limit=None)) == before
    # The same write with an authority that holds goes through.
    live = await caller(d, "op")
    assert await d.store.add_api_key(record, 20, entry, authority=live.authority("Operator"))
