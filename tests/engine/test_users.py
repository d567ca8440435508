"""engine.users: creating users and ending lockouts, as the CLI, tests and scripts do."""

from __future__ import annotations

import pytest

from oms_auth.engine import users
from oms_auth.engine.deps import Deps
from oms_auth.errors import InvalidValue


async def test_a_user_is_created_with_its_permissions_accounts_and_question(deps: Deps) -> None:
    uid = await users.create_user(
        deps,
        username=" Trader ",
        email="t@example.test",
        password="Correct-Horse9",
        permissions=["trading"],
        accounts=[10, 11],
        question="Pet?",
        answer="Rex",
    )
    user = await deps.store.user_by_id(uid)
    assert user is not None
    assert (user.username, user.permissions, user.account_id) == ("Trader", {"Trading"}, 10)
    (question,) = await deps.store.security_questions(uid)
    assert question.question == "Pet?" and "Rex" not in question.answer_hash


@pytest.mark.parametrize(
    "bad",
    [
        {"username": "  "},
        {"question": "Pet?"},
        {"totp_secret": "short"},
    ],
)
async def test_what_cannot_be_a_user_is_refused_and_nothing_is_created(
    deps: Deps, bad: dict[str, str]
) -> None:
    spec = {"username": "alice", "email": "a@example.test", "password": "Correct-Horse9"}
    with pytest.raises(InvalidValue):
        await users.create_user(deps, **{**spec, **bad})  # type: ignore[arg-type]
    assert await deps.store.list_users() == []


async def test_unlock_ends_a_lock_and_is_audited(deps: Deps) -> None:
    from oms_auth.store import AuditEntry

    uid = await users.create_user(
        deps, username="alice", email="a@example.test", password="Correct-Horse9"
    )
    await deps.store.set_lock(uid, deps.clock() + 600, AuditEntry(action="locked", target_id=uid))
    user = await deps.store.user_by_id(uid)
    assert user is not None and user.locked(deps.clock())
    await users.unlock(deps, user, actor_id=None, source="cli")
    again = await deps.store.user_by_id(uid)
    assert again is not None and not again.locked(deps.clock())
    assert (await deps.store.audit_rows(limit=1))[0].action == "unlocked"
