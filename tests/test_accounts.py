"""GetUserInfo, GetUserPermissions, GetUserAccounts (docs/protocol.md, the heading of that
name), which deployed clients call right after login; and the gateway paths they ask for."""

from __future__ import annotations

import re

import pytest

from oms_auth.app import App
from oms_auth.conformance.cases.accounts import RECORD
from oms_auth.store import AuditEntry
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user


async def logged_in(app: App, username: str, path: str = "/WSGateway/") -> Client:
    c = await Client.connect(app.url.replace("/WSGateway/", path))
    reply = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    assert reply.o["Authenticated"], reply.o
    return c


# The APEX user record, key by key, as the official SDKs parse it (strictly: every key, its type),
# then what this service adds.
RECORD_TYPES: dict[str, type] = {
    **RECORD,
    "Permissions": list,
    "AccountIds": list,
    "HasSecurityQuestions": bool,
}
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
NO_TIME = "0001-01-01T00:00:00Z"
ONLY_RELATED = (
    "Only an Operator, or a Trading user sharing one of its accounts, may see another user"
)


async def test_a_user_reads_its_own_full_apex_record_with_every_key_typed(app: App) -> None:
    uid = await make_user(
        app.deps, "trader", permissions=["Trading"], accounts=[10, 11], question="Q?", answer="A"
    )
    async with await logged_in(app, "trader") as c:
        info = (await c.call("GetUserInfo", {})).o
        assert list(info) == list(RECORD_TYPES)
        for key, kind in RECORD_TYPES.items():
            assert type(info[key]) is kind, key
        assert ISO_UTC.fullmatch(info["DateTimeCreated"])
        assert {k: v for k, v in info.items() if k != "DateTimeCreated"} == {
            "UserId": uid,
            "UserName": "trader",
            "Email": "trader@example.test",
            "PasswordHash": "",
            "PendingEmailCode": "",
            "EmailVerified": False,
            "AccountId": 10,
            "AffiliateId": 0,
            "RefererId": 0,
            "OMSId": 1,
            "Use2FA": False,
            "Salt": "",
            "PendingCodeTime": NO_TIME,
            "Locked": False,
            "LockedTime": NO_TIME,
            "NumberOfFailedAttempt": 0,
            "MarginBorrowerEnabled": False,
            "MarginAcquisitionHalt": False,
            "OperatorId": 1,
            "Permissions": ["Trading"],
            "AccountIds": [10, 11],
            "HasSecurityQuestions": True,
        }
        for named in (
            {"UserId": str(uid)},
            {"UserName": "TRADER"},
            {"Email": "Trader@example.test"},
        ):
            assert (await c.call("GetUserInfo", named)).o == info
        assert (await c.call("GetUserPermissions", {"UserId": uid})).o == ["Trading"]
        assert (await c.call("GetUserAccounts", {"OMSId": 1, "UserId": uid})).o == [10, 11]


async def test_the_record_shows_a_lock_and_the_failed_logins_never_a_hash(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "alice")
    async with await Client.connect(app.url) as c:
        for _ in range(3):
            await c.call("AuthenticateUser", {"UserName": "alice", "Password": "wrong"})
    async with await logged_in(app, "op") as c:
        info = (await c.call("GetUserInfo", {"UserName": "alice"})).o
        assert (info["NumberOfFailedAttempt"], info["Locked"]) == (3, False)
    user = await app.deps.store.user_by_name("alice")
    assert user is not None
    await app.deps.store.set_lock(
        user.id, clock() + 60, AuditEntry(action="lock", target_id=user.id)
    )
    async with await logged_in(app, "op") as c:
        info = (await c.call("GetUserInfo", {"UserName": "alice"})).o
        assert info["Locked"] is True and ISO_UTC.fullmatch(info["LockedTime"])
        assert info["LockedTime"] != NO_TIME
        assert (info["PasswordHash"], info["Salt"]) == ("", "")
        assert user.password_hash not in str(info)


async def test_an_operator_reads_users_of_its_oms_by_id_name_or_email_and_no_others(
    app: App,
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    mine = await make_user(app.deps, "mine", accounts=[5])
    theirs = await make_user(app.deps, "theirs", oms=2, accounts=[6])
    async with await logged_in(app, "op") as c:
        assert (await c.call("GetUserAccounts", {"UserId": mine})).o == [5]
        for named in ({"UserId": mine}, {"UserName": "mine"}, {"Email": "mine@example.test"}):
            assert (await c.call("GetUserInfo", named)).o["UserId"] == mine
            assert (await c.call("GetUserAccounts", named)).o == [5]
        for missing in (
            {"UserId": theirs},
            {"UserId": 999999},
            {"UserName": "theirs"},
            {"UserName": "nobody"},
            {"Email": "theirs@example.test"},
            {"Email": "nobody@example.test"},
        ):
            answer = (await c.call("GetUserInfo", missing)).o
            assert (answer["errorcode"], answer["detail"]) == (104, "User does not exist"), missing


@pytest.mark.parametrize("function", ["GetUserInfo", "GetUserPermissions", "GetUserAccounts"])
async def test_a_trading_user_reads_users_sharing_its_accounts_and_no_one_else(
    app: App, function: str
) -> None:
    await make_user(app.deps, "trader", permissions=["Trading"], accounts=[10])
    mate = await make_user(app.deps, "mate", permissions=["Trading"], accounts=[10, 12])
    await make_user(app.deps, "stranger", permissions=["Trading"], accounts=[11])
    await make_user(app.deps, "viewer", accounts=[10])  # shares 10, but may not trade
    async with await logged_in(app, "trader") as c:
        shared = (await c.call(function, {"UserName": "mate"})).o
        expected = {"GetUserPermissions": ["Trading"], "GetUserAccounts": [10, 12]}
        assert (
            shared["UserId"] == mate if function == "GetUserInfo" else shared == expected[function]
        )
        # Another user is never answered with the caller's own record: it is refused.
        for named in ({"UserName": "stranger"}, {"Email": "stranger@example.test"}):
            refused = (await c.call(function, named)).o
            assert (refused["errorcode"], refused["detail"]) == (20, ONLY_RELATED)
        bad = (await c.call(function, {"UserId": "x"})).o
        assert (bad["errorcode"], bad["detail"]) == (100, "Invalid value provided for UserId")
    async with await logged_in(app, "viewer") as c:
        refused = (await c.call(function, {"UserName": "trader"})).o
        assert (refused["errorcode"], refused["detail"]) == (20, ONLY_RELATED)
    async with await Client.connect(app.url) as anonymous:
        answer = await anonymous.call(function, {})
        assert answer.m == 1 and (answer.o["errorcode"], answer.o["detail"]) == (
            20,
            "Not logged in",
        )


async def test_an_email_shared_by_two_users_is_told_only_to_who_may_read_both(
    app: App,
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "trader", permissions=["Trading"], accounts=[10])
    await make_user(app.deps, "one", accounts=[20], email="same@example.test")
    await make_user(app.deps, "two", accounts=[21], email="SAME@example.test")
    async with await logged_in(app, "trader") as c:
        refused = (await c.call("GetUserInfo", {"Email": "same@example.test"})).o
        assert (refused["errorcode"], refused["detail"]) == (20, ONLY_RELATED)
    async with await logged_in(app, "op") as c:
        ambiguous = (await c.call("GetUserInfo", {"Email": "same@example.test"})).o
        assert ambiguous["errorcode"] == 100 and "Several users" in ambiguous["detail"]


@pytest.mark.parametrize("path", ["/wsgateway/", "/wsgateway", "/WSGateway", "/"])
async def test_the_gateway_answers_on_every_spelling_of_its_path(app: App, path: str) -> None:
    await make_user(app.deps, "trader")
    async with await logged_in(app, "trader", path) as c:
        assert (await c.call("Ping", {})).o == {"msg": "PONG"}
