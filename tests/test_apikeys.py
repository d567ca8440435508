"""API keys (docs/protocol.md, "AddUserAPIKey, GetUserAPIKeys, RemoveUserAPIKey"; docs/rules.md,
"API keys") end to end through a real socket and store: AddUserAPIKey, GetUserAPIKeys,
RemoveUserAPIKey, the API-key AuthenticateUser, what a key session may not do, and what a reset does
to the keys. The signature is computed here as a bot computes it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from oms_auth.app import App
from protocol.client import Answer, Client
from protocol.messages import AddUserAPIKeyReply

from .helpers import (
    PASSWORD,
    Clock,
    make_user,
    parse_mail,
    settings_for,
    store_contents,
    wait_for_mail,
)
from .test_sessions import FAILED

NEW = "Fresh-Start42"
OK = {"result": True, "errormsg": None, "errorcode": 0, "detail": None}
INVALID = {**FAILED, "errormsg": "Invalid API key login"}
KEY_SESSION = {
    "result": False,
    "errormsg": "Not Authorized",
    "errorcode": 20,
    "detail": "A session opened with an API key cannot change account security;"
    " log in with the password",
}
TOO_MANY_LOGINS = "Too many failed login attempts; try again later"


QUESTION = {"Question": "Q?", "Answer": "a"}


def signature(secret: str, nonce: str, user_id: str, key: str) -> str:
    """A bot's signature: lower-case hex HMAC-SHA256 of Nonce + UserId + APIKey, keyed with the
    APISecret (the string concatenation of the texts it sends)."""
    message = (nonce + user_id + key).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def key_login(key: dict[str, Any], nonce: int | str) -> dict[str, Any]:
    uid = str(key["UserId"])
    return {
        "APIKey": key["APIKey"],
        "Signature": signature(key["APISecret"], str(nonce), uid, key["APIKey"]),
        "UserId": uid,
        "Nonce": str(nonce),
    }


async def password_client(app: App, username: str) -> Client:
    c = await Client.connect(app.url)
    reply = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    assert reply.o["Authenticated"], reply.o
    return c


async def key_client(app: App, key: dict[str, Any], nonce: int) -> tuple[Client, dict[str, Any]]:
    c = await Client.connect(app.url)
    reply = await c.call("AuthenticateUser", key_login(key, nonce))
    assert reply.o["Authenticated"], reply.o
    return c, reply.o


async def add_key(c: Client, payload: dict[str, Any]) -> dict[str, Any]:
    answer = await c.call("AddUserAPIKey", payload)
    assert answer.m == 1 and "APISecret" in answer.o, answer.o
    return dict(answer.o)


@pytest.fixture
async def ids(app: App) -> dict[str, int]:
    d = app.deps
    return {
        "op": await make_user(d, "op", permissions=["Operator"], accounts=[1]),
        "op2": await make_user(d, "op2", permissions=["Operator"], oms=2, accounts=[2]),
        "bot": await make_user(d, "bot", permissions=["Trading"], accounts=[10]),
        "other": await make_user(d, "other", permissions=["Trading"], accounts=[10]),
    }


async def test_a_user_adds_lists_and_removes_its_own_keys(app: App, ids: dict[str, int]) -> None:
    async with await password_client(app, "bot") as c:
        key = await add_key(c, {"UserId": ids["bot"], "Permissions": ["Trading", "Withdraw"]})
        assert set(key) == {"APIKey", "APISecret", "UserId", "Permissions"}
        assert key["UserId"] == ids["bot"] and key["Permissions"] == ["Trading", "Withdraw"]
        assert len(key["APIKey"]) == 32 and int(key["APIKey"], 16) >= 0
        second = await add_key(c, {"UserId": str(ids["bot"]), "Permissions": []})
        assert second["APIKey"] != key["APIKey"]
        listed = (await c.call("GetUserAPIKeys", {"UserId": ids["bot"]})).o
        assert listed == [
            {"APIKey": key["APIKey"], "UserId": ids["bot"], "Permissions": ["Trading", "Withdraw"]},
            {"APIKey": second["APIKey"], "UserId": ids["bot"], "Permissions": []},
        ]
        removed = await c.call("RemoveUserAPIKey", {"UserId": ids["bot"], "APIKey": key["APIKey"]})
        assert removed.o == OK
        again = await c.call("RemoveUserAPIKey", {"UserId": ids["bot"], "APIKey": key["APIKey"]})
        assert again.o["errorcode"] == 104
        assert [k["APIKey"] for k in (await c.call("GetUserAPIKeys", {})).o] == [second["APIKey"]]
    rows = await app.deps.store.audit_rows(user="bot")
    actions = [r.action for r in rows]
    assert actions.count("api-key-added") == 2 and actions.count("api-key-removed") == 1


async def test_an_operator_manages_the_keys_of_users_of_its_oms(
    app: App, ids: dict[str, int]
) -> None:
    async with await password_client(app, "op") as c:
        key = await add_key(c, {"UserId": ids["bot"], "Permissions": ["Trading"]})
        assert key["UserId"] == ids["bot"]
        listed = (await c.call("GetUserAPIKeys", {"UserId": ids["bot"]})).o
        assert [k["APIKey"] for k in listed] == [key["APIKey"]]
        payload = {"UserId": ids["bot"], "APIKey": key["APIKey"]}
        assert (await c.call("RemoveUserAPIKey", payload)).o == OK
    async with await password_client(app, "op2") as c:
        # Users of another OMS look missing to its Operator.
        answer = await c.call("AddUserAPIKey", {"UserId": ids["bot"], "Permissions": []})
        assert (answer.o["errorcode"], answer.o["detail"]) == (104, "User does not exist")


async def test_another_user_and_an_anonymous_caller_are_refused(
    app: App, ids: dict[str, int]
) -> None:
    async with await password_client(app, "bot") as c:
        key = await add_key(c, {"UserId": ids["bot"], "Permissions": []})
    async with await password_client(app, "other") as c:
        for name, payload in [
            ("AddUserAPIKey", {"UserId": ids["bot"], "Permissions": []}),
            ("GetUserAPIKeys", {"UserId": ids["bot"]}),
            ("RemoveUserAPIKey", {"UserId": ids["bot"], "APIKey": key["APIKey"]}),
        ]:
            answer = await c.call(name, payload)
            assert answer.o["errorcode"] == 20, (name, answer.o)
        # Naming itself, another user's key is not found.
        answer = await c.call("RemoveUserAPIKey", {"APIKey": key["APIKey"]})
        assert answer.o["errorcode"] == 104
    async with await Client.connect(app.url) as c:
        answer = await c.call("GetUserAPIKeys", {})
        assert (answer.o["errorcode"], answer.o["detail"]) == (20, "Not logged in")
    assert len(await app.deps.store.api_keys(ids["bot"])) == 1


async def test_a_bot_logs_in_with_a_signed_nonce(app: App, ids: dict[str, int]) -> None:
    async with await password_client(app, "bot") as c:
        key = await add_key(c, {"UserId": ids["bot"], "Permissions": ["Trading"]})
    bot, reply = await key_client(app, key, 1700000000000)
    async with bot:
        assert reply["UserId"] == ids["bot"] and reply["User"]["UserName"] == "bot"
        assert reply["Requires2FA"] is False and len(reply["SessionToken"]) >= 40
        info = (await bot.call("GetUserInfo", {})).o
        assert info["UserId"] == ids["bot"]
    # Integers for UserId and Nonce work too (what is signed is their decimal text).
    async with await Client.connect(app.url) as c:
        payload = key_login(key, 1700000000001)
        payload.update(UserId=ids["bot"], Nonce=1700000000001)
        assert (await c.call("AuthenticateUser", payload)).o["Authenticated"] is True
        # The same nonce again fails; an older one is new to the key: nonces are random.
        assert (await c.call("AuthenticateUser", payload)).o == INVALID
        assert (await c.call("AuthenticateUser", key_login(key, 5))).o["Authenticated"] is True


async def test_every_failed_key_login_answers_in_the_login_shape(
    app: App, ids: dict[str, int]
) -> None:
    async with await password_client(app, "bot") as c:
        key = await add_key(c, {"UserId": ids["bot"], "Permissions": []})
    good = key_login(key, 10)
    variants = [
        {**good, "Signature": "0" * 64},
        {**good, "Signature": good["Signature"][:-1]},
        {**good, "UserId": str(ids["other"])},
        {**good, "APIKey": "0" * 32},
        key_login(key, ""),  # signed, but not a nonce: 1 to 64 printable ASCII characters
        key_login(key, "n" * 65),
        {k: v for k, v in good.items() if k != "Signature"},
        {k: v for k, v in good.items() if k != "Nonce"},
        {k: v for k, v in good.items() if k != "UserId"},
    ]
    async with await Client.connect(app.url) as c:
        for payload in variants:
            answer = await c.call("AuthenticateUser", payload)
            assert (answer.m, answer.o) == (1, INVALID), payload
        assert (await c.call("AuthenticateUser", good)).o["Authenticated"] is True


async def test_a_key_session_cannot_change_account_security(app: App, ids: dict[str, int]) -> None:
    async with await password_client(app, "op") as c:
        key = await add_key(c, {"UserId": ids["op"], "Permissions": ["Operator"]})
    bot, reply = await key_client(app, key, 1)
    async with bot:
        for name, payload in [
            ("AddUserAPIKey", {"Permissions": []}),
            ("AddUserAPIKey", {"UserId": ids["bot"], "Permissions": []}),
            ("AddUserAPIKey", {"Permissions": [], "Password": PASSWORD}),
            ("GetUserAPIKeys", {"UserId": ids["bot"]}),
            ("RemoveUserAPIKey", {"APIKey": key["APIKey"]}),
            ("ResetPassword", {"UserName": "bot"}),
            ("ResetPassword", {"UserName": "nobody"}),
            ("EnableGoogle2FA", {}),
            ("Disable2FA", {"Code": "123456"}),
            ("SetSecurityQuestions", {"Password": PASSWORD, "Questions": [QUESTION]}),
            (
                "CreateUser",
                {"UserName": "n", "Email": "n@example.test", "Permissions": ["Operator"]},
            ),
        ]:
            assert (await bot.call(name, payload)).o == KEY_SESSION, (name, payload)
        # Its own reset stays possible (the mail goes to the user, not the bot), and so does
        # listing its own user's keys, without their secrets.
        assert (await bot.call("ResetPassword", {"UserName": "op"})).o == OK
        listed = (await bot.call("GetUserAPIKeys", {})).o
        own = {"APIKey": key["APIKey"], "UserId": ids["op"], "Permissions": ["Operator"]}
        assert listed == [own]
    # Resumed on another connection, the session is still the key's.
    async with await Client.connect(app.url) as c:
        resumed = await c.call("WebAuthenticateUser", {"SessionToken": reply["SessionToken"]})
        assert resumed.o["Authenticated"] is True
        assert (await c.call("AddUserAPIKey", {"Permissions": []})).o == KEY_SESSION
    assert [k.key for k in await app.deps.store.api_keys(ids["op"])] == [key["APIKey"]]


async def test_removing_a_key_logs_its_sessions_off(app: App, ids: dict[str, int]) -> None:
    async with await password_client(app, "bot") as owner:
        key = await add_key(owner, {"Permissions": []})
        bot, _ = await key_client(app, key, 1)
        async with bot:
            assert (await owner.call("RemoveUserAPIKey", {"APIKey": key["APIKey"]})).o == OK
            event = await bot.next_unmatched(timeout=5)
            assert (event.m, event.n, event.o) == (
                3,
                "LogoutEvent",
                {"Reason": "LoggedOutElsewhere"},
            )
            assert (await bot.call("LogOut")).o["errorcode"] == 20
            assert (await bot.call("AuthenticateUser", key_login(key, 2))).o == INVALID
        # The owner's password session is untouched.
        assert (await owner.call("GetUserAPIKeys", {})).o == []


async def reset_by_operator(app: App, username: str) -> dict[str, Any]:
    """A completed reset of ``username`` (requested by op); returns its password-changed mail."""
    maildir = Path(app.settings.mail.removeprefix("maildir:"))
    before = len(list((maildir / "new").glob("*"))) if (maildir / "new").exists() else 0
    async with await password_client(app, "op") as c:
        assert (await c.call("ResetPassword", {"UserName": username})).o == OK
    mail = parse_mail((await wait_for_mail(maildir, before + 1))[-1])
    async with await Client.connect(app.url) as c:
        payload = {"UserId": mail["user_id"], "Password": NEW, "PendingCode": mail["code"]}
        assert (await c.call("ResetPassword2", payload)).o == OK
    changed = parse_mail((await wait_for_mail(maildir, before + 2))[-1])
    assert changed["msg"]["Subject"] == "Your OMS Exchange password was changed"
    return changed


async def test_a_reset_revokes_the_users_keys_and_the_mail_says_so(
    app: App, ids: dict[str, int]
) -> None:
    async with await password_client(app, "bot") as c:
        key = await add_key(c, {"Permissions": []})
    changed = await reset_by_operator(app, "bot")
    assert await app.deps.store.api_keys(ids["bot"]) == []
    assert "API keys of your account were revoked" in changed["text"]
    assert "revoked" in changed["html"]
    async with await Client.connect(app.url) as c:
        assert (await c.call("AuthenticateUser", key_login(key, 1))).o == INVALID


@pytest.fixture
async def keeping(tmp_path: Path, clock: Clock, db: str) -> AsyncIterator[App]:
    service = App(
        settings_for(tmp_path, db=db, reset_keeps_api_keys=True), clock=clock, login_delay=0
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def test_a_reset_keeps_the_keys_when_configured_and_the_mail_says_so(
    keeping: App,
) -> None:
    app = keeping
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "bot")
    async with await password_client(app, "bot") as c:
        key = await add_key(c, {"Permissions": []})
    bot, _ = await key_client(app, key, 1)
    async with bot:
        changed = await reset_by_operator(app, "bot")
        # Every session ended, the key's too; the key itself still logs in.
        event = await bot.next_unmatched(timeout=5)
        assert event.o == {"Reason": "PasswordChanged"}
    assert "API keys of your account were kept" in changed["text"]
    async with await Client.connect(app.url) as c:
        assert (await c.call("AuthenticateUser", key_login(key, 2))).o["Authenticated"] is True


async def test_the_secret_and_signatures_reach_no_store_log_audit_or_repr(
    app: App, ids: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    async with await password_client(app, "bot") as c:
        key = await add_key(c, {"Permissions": ["Trading"]})
    logins = [key_login(key, n) for n in (1, 1, 2)]
    async with await Client.connect(app.url) as c:
        for payload in logins:
            await c.call("AuthenticateUser", payload)
        await c.call("AuthenticateUser", {**key_login(key, 3), "Signature": "f" * 64})
    secret = key["APISecret"]
    raw = await store_contents(app.settings.db)
    audit = " ".join(str(r) for r in await app.deps.store.audit_rows(limit=1000))
    for value in [secret, *(p["Signature"] for p in logins)]:
        assert value.encode() not in raw
        assert value not in caplog.text and value not in audit
    assert key["APIKey"] in audit  # which key was added is on record
    reply = AddUserAPIKeyReply(APIKey=key["APIKey"], APISecret=secret, UserId=1, Permissions=[])
    assert secret not in repr(reply)


async def burst(cs: list[Client], calls: list[dict[str, Any]]) -> list[Answer]:
    return list(
        await asyncio.gather(
            *(c.call("AuthenticateUser", p) for c, p in zip(itertools.cycle(cs), calls))
        )
    )


async def test_simultaneous_logins_with_one_nonce_succeed_once(
    app: App, ids: dict[str, int]
) -> None:
    async with await password_client(app, "bot") as c:
        key = await add_key(c, {"Permissions": []})
    cs = [await Client.connect(app.url) for _ in range(6)]
    try:
        answers = await burst(cs, [key_login(key, 77)] * 30)
    finally:
        await asyncio.gather(*(c.close() for c in cs))
    assert all(a.m == 1 and "Authenticated" in a.o for a in answers)
    assert sum(a.o["Authenticated"] for a in answers) == 1
    failed = [a.o["errormsg"] for a in answers if not a.o["Authenticated"]]
    assert set(failed) <= {INVALID["errormsg"], TOO_MANY_LOGINS}
    sessions = await app.deps.store.audit_rows(user="bot")
    assert sum(r.action == "login" and r.detail is not None for r in sessions) == 1


async def test_a_burst_of_wrong_signatures_checks_at_most_the_login_limit(
    app: App, ids: dict[str, int]
) -> None:
    async with await password_client(app, "bot") as c:
        key = await add_key(c, {"Permissions": []})
    limit = app.settings.login_failures_per_user
    cs = [await Client.connect(app.url) for _ in range(6)]
    try:
        answers = await burst(
            cs, [{**key_login(key, n), "Signature": "0" * 64} for n in range(1, 61)]
        )
    finally:
        await asyncio.gather(*(c.close() for c in cs))
    events = app.metrics.events
    assert events["api_key_checks"] <= limit
    assert events["login:api_key_failed"] == events["api_key_checks"]
    refused = [a for a in answers if a.o["errormsg"] == TOO_MANY_LOGINS]
    assert len(refused) == len(answers) - events["api_key_checks"]
    assert all(a.o["Authenticated"] is False for a in answers)
    metrics = app.metrics.render()
    assert f'oms_auth_logins_total{{outcome="api_key_failed"}} {events["api_key_checks"]}' in (
        metrics
    )


async def test_a_captured_login_cannot_replay_respelled_under_a_greater_nonce(
    app: App, ids: dict[str, int]
) -> None:
    async with await password_client(app, "bot") as c:
        key = await add_key(c, {"UserId": ids["bot"], "Permissions": []})
    uid = str(ids["bot"])
    # Nonce "1" + UserId "0<uid>" would sign the same text as Nonce "10" + UserId "<uid>":
    # only one spelling of each is taken, so a login can never be respelled into another.
    captured = signature(key["APISecret"], "1", "0" + uid, key["APIKey"])
    async with await Client.connect(app.url) as c:
        for nonce, user_id in (("1", "0" + uid), ("01", "0" + uid), ("1", " 0" + uid)):
            attempt = {"APIKey": key["APIKey"], "Signature": captured, "UserId": user_id}
            assert (await c.call("AuthenticateUser", {**attempt, "Nonce": nonce})).o == INVALID
