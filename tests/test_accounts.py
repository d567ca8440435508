"""GetUserInfo, GetUserPermissions, GetUserAccounts (docs/protocol.md, the heading of that
name), which deployed clients call right after login; and the gateway paths they ask for."""

from __future__ import annotations

import pytest

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, make_user


async def logged_in(app: App, username: str, path: str = "/WSGateway/") -> Client:
    c = await Client.connect(app.url.replace("/WSGateway/", path))
    reply = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    assert reply.o["Authenticated"], reply.o
    return c


async def test_a_user_sees_itself_with_permissions_accounts_and_questions(app: App) -> None:
    uid = await make_user(
        app.deps, "trader", permissions=["Trading"], accounts=[10, 11], question="Q?", answer="A"
    )
    async with await logged_in(app, "trader") as c:
        info = (await c.call("GetUserInfo", {})).o
        assert info == {
            "UserId": uid,
            "UserName": "trader",
            "Email": "trader@example.test",
            "EmailVerified": False,
            "AccountId": 10,
            "OMSId": 1,
            "Use2FA": False,
            "Permissions": ["Trading"],
            "AccountIds": [10, 11],
            "HasSecurityQuestions": True,
        }
        assert (await c.call("GetUserInfo", {"UserId": str(uid)})).o == info
        assert (await c.call("GetUserPermissions", {"UserId": uid})).o == ["Trading"]
        assert (await c.call("GetUserAccounts", {"OMSId": 1, "UserId": uid})).o == [10, 11]


async def test_an_operator_sees_the_users_of_its_oms_and_no_others(app: App) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    mine = await make_user(app.deps, "mine", accounts=[5])
    theirs = await make_user(app.deps, "theirs", oms=2, accounts=[6])
    async with await logged_in(app, "op") as c:
        assert (await c.call("GetUserAccounts", {"UserId": mine})).o == [5]
        for missing in (theirs, 999999):
            answer = (await c.call("GetUserInfo", {"UserId": missing})).o
            assert (answer["errorcode"], answer["detail"]) == (104, "User does not exist")


@pytest.mark.parametrize("function", ["GetUserInfo", "GetUserPermissions", "GetUserAccounts"])
async def test_others_and_anonymous_callers_are_refused(app: App, function: str) -> None:
    await make_user(app.deps, "trader", permissions=["Trading"], accounts=[10])
    mate = await make_user(app.deps, "mate", permissions=["Trading"], accounts=[10])
    async with await logged_in(app, "trader") as c:
        refused = (await c.call(function, {"UserId": mate})).o
        assert (refused["errorcode"], refused["detail"]) == (
            20,
            "Only an Operator may see users other than itself",
        )
        bad = (await c.call(function, {"UserId": "x"})).o
        assert (bad["errorcode"], bad["detail"]) == (100, "Invalid value provided for UserId")
    async with await Client.connect(app.url) as anonymous:
        answer = await anonymous.call(function, {})
        assert answer.m == 1 and (answer.o["errorcode"], answer.o["detail"]) == (
            20,
            "Not logged in",
        )


@pytest.mark.parametrize("path", ["/wsgateway/", "/wsgateway", "/WSGateway", "/"])
async def test_the_gateway_answers_on_every_spelling_of_its_path(app: App, path: str) -> None:
    await make_user(app.deps, "trader")
    async with await logged_in(app, "trader", path) as c:
        assert (await c.call("Ping", {})).o == {"msg": "PONG"}
