"""engine.reset on its own (docs/rules.md, "Who may start a reset" to "Lockout"): codes, checks in
order, lockout."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from oms_auth.crypto import mail_context
from oms_auth.engine.deps import Deps
from oms_auth.engine.reset import Resets
from oms_auth.errors import NotAuthorized, NotFound, OperationFailed

from ..helpers import Clock, make_user, sql
from .conftest import Told, caller

NEW = "Fresh-Start42"


@pytest.fixture
def resets(deps: Deps) -> Resets:
    return Resets(deps)


async def code_of(deps: Deps, user_id: int) -> str:
    """The code sealed in the user's newest queued reset mail (as the outbox opens it)."""
    rows = await sql(
        deps.settings.db,
        "SELECT sealed FROM outbox WHERE user_id = ? AND kind = 'reset' ORDER BY id DESC",
        user_id,
    )
    opened = deps.sealer.open(rows[0][0], mail_context(user_id, "reset"))
    return str(msgspec.json.decode(opened)["code"])


async def test_an_operator_request_issues_a_code_that_works_once(
    deps: Deps, resets: Resets, told: Told
) -> None:
    await make_user(deps, "op", permissions=["Operator"])
    uid = await make_user(deps, "alice")
    await resets.request(await caller(deps, "op"), "alice", "10.0.0.1")
    code = await code_of(deps, uid)
    await resets.complete(
        user_id=str(uid), password=NEW, code=code, answer=None, totp_code=None, source="x"
    )
    assert told.ended == [(uid, "PasswordChanged")] and told.mail == 2
    with pytest.raises(NotFound):
        await resets.complete(
            user_id=uid, password=NEW + "x", code=code, answer=None, totp_code=None, source="x"
        )


async def test_a_code_expires_after_its_day(deps: Deps, resets: Resets, clock: Clock) -> None:
    await make_user(deps, "op", permissions=["Operator"])
    uid = await make_user(deps, "alice")
    await resets.request(await caller(deps, "op"), "alice", "10.0.0.1")
    code = await code_of(deps, uid)
    clock.advance(deps.settings.code_valid_seconds)
    with pytest.raises(NotFound):
        await resets.user_id_for(code, "10.0.0.1")


async def test_a_burst_of_wrong_answers_checks_five_and_locks(
    deps: Deps, resets: Resets, clock: Clock
) -> None:
    await make_user(deps, "op", permissions=["Operator"])
    uid = await make_user(deps, "guarded", question="Pet?", answer="Rex")
    await resets.request(await caller(deps, "op"), "guarded", "10.0.0.1")
    code = await code_of(deps, uid)
    before = deps.hasher.checks

    async def attempt(n: int) -> type[Exception]:
        try:
            await resets.complete(
                user_id=uid, password=NEW, code=code, answer=f"cat{n}", totp_code=None, source="x"
            )
        except (NotAuthorized, OperationFailed) as refusal:
            return type(refusal)
        raise AssertionError("a wrong answer was accepted")

    outcomes = await asyncio.gather(*(attempt(n) for n in range(30)))
    assert deps.hasher.checks - before == deps.settings.lockout_failures
    assert outcomes.count(NotAuthorized) == deps.settings.lockout_failures
    user = await deps.store.user_by_id(uid)
    assert user is not None and user.locked(clock.now)
