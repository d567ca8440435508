"""engine.users: creating users and ending lockouts, as the CLI, tests and scripts do."""

from __future__ import annotations

import pytest

from oms_auth.engine import users
from oms_auth.engine.deps import Deps
from oms_auth.errors import InvalidValue, OperationFailed


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
    ("bad", "text"),
    [
        ({"username": "  "}, "Username: it must not be empty"),
        ({"question": "Pet?"}, "A security question and its answer go together"),
        ({"totp_secret": "short"}, "A TOTP secret must be base32 of at least 80 bits"),
        ({"password": "a"}, "Your portal password must be over eight characters long"),
        ({"password": "Summer2024!"}, "must not be a commonly used password"),
        (
            {"password": "Alice-Pass-77", "username": "Alice-Pass-77"},
            "must not match your username",
        ),
        ({"email": "notanemail"}, "Email: expected an address like name@example.com"),
        ({"email": "a@example.test\r\nBcc: x@example.test"}, "control or format character"),
        ({"email": "a b@example.test"}, "Email: expected"),
        ({"username": "ali\u200bce2"}, "control or format character"),
        ({"username": "al\u202eice2"}, "control or format character"),
        ({"permissions": ["Viewer\x1fOperator"]}, "Permissions"),
        ({"permissions": [""]}, "Permissions"),
    ],
)
async def test_what_cannot_be_a_user_is_refused_and_nothing_is_created(
    deps: Deps, bad: dict[str, object], text: str
) -> None:
    spec = {"username": "alice", "email": "a@example.test", "password": "Correct-Horse9"}
    with pytest.raises(InvalidValue) as refused:
        await users.create_user(deps, **{**spec, **bad})  # type: ignore[arg-type]
    assert text in str(refused.value.detail)
    assert "--" not in str(refused.value.detail)  # the engine names values, never CLI flags
    assert await deps.store.list_users() == []


@pytest.mark.parametrize(
    "lookalike",
    [
        "ｔｒａｄｅｒ１",  # fullwidth: NFKC makes it trader1 itself
        "tr\u0430der1",  # a Cyrillic a
        "TRADERl",  # l for 1
        "trader_1",
        "tra\u0301der1",  # a combining accent
        "trαder1",  # a Greek alpha
    ],
)
async def test_a_username_that_looks_like_an_existing_one_is_refused(
    deps: Deps, lookalike: str
) -> None:
    spec = {"email": "a@example.test", "password": "Correct-Horse9"}
    await users.create_user(deps, username="trader1", **spec)  # type: ignore[arg-type]
    with pytest.raises(OperationFailed) as refused:
        await users.create_user(deps, username=lookalike, **spec)  # type: ignore[arg-type]
    assert refused.value.detail == "That username is not available"
    assert [u.username for u in await deps.store.list_users()] == ["trader1"]
    # Names that merely resemble each other in part are fine.
    await users.create_user(deps, username="trader2", **spec)  # type: ignore[arg-type]


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
