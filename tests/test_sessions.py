"""docs/protocol.md, "AuthenticateUser" to "LogOut", and docs/rules.md, "Sessions":
AuthenticateUser, Authenticate2FA, WebAuthenticateUser, LogOut, expiry."""

from __future__ import annotations

import hashlib

import pyotp
import pytest

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, store_contents

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"
FAILED = {
    "Authenticated": False,
    "SessionToken": None,
    "UserId": None,
    "User": None,
    "Locked": False,
    "Requires2FA": False,
    "TwoFAType": None,
    "AuthType": None,
    "TwoFAToken": None,
    "Pending2FaToken": None,
    "AddtlInfo": "",
    "errormsg": "Invalid username or password",
    "NeedsSecurityQuestions": False,
}


async def login(client: Client, username: str, password: str = PASSWORD) -> dict:
    answer = await client.call("AuthenticateUser", {"UserName": username, "Password": password})
    assert answer.m == 1
    return answer.o


async def test_login_returns_a_session_token_and_the_user(app: App, client: Client) -> None:
    user_id = await make_user(app.deps, "alice", accounts=[7], permissions=["Trading"])
    reply = await login(client, "alice")
    assert reply["Authenticated"] is True and len(reply["SessionToken"]) >= 40
    assert reply["UserId"] == user_id  # top level too: deployed front-ends read it there
    assert reply["User"] == {
        "UserId": user_id,
        "UserName": "alice",
        "Email": "alice@example.test",
        "EmailVerified": False,
        "AccountId": 7,
        "OMSId": 1,
        "Use2FA": False,
    }


async def test_usernames_match_case_insensitively(app: App, client: Client) -> None:
    await make_user(app.deps, "Alice")
    assert (await login(client, "  aLICE "))["Authenticated"] is True


async def test_unknown_user_and_wrong_password_answer_alike(app: App, client: Client) -> None:
    await make_user(app.deps, "alice")
    assert await login(client, "alice", "wrong") == FAILED
    assert await login(client, "nobody", "wrong") == FAILED


@pytest.mark.parametrize("payload", [{}, {"UserName": ""}, {"UserName": "a"}, {"Password": "x"}])
async def test_a_missing_username_or_password_is_code_100(client: Client, payload: dict) -> None:
    answer = await client.call("AuthenticateUser", payload)
    assert answer.o["errorcode"] == 100 and answer.o["detail"].startswith("Invalid value")


async def test_the_session_token_is_stored_only_as_a_digest(app: App, client: Client) -> None:
    await make_user(app.deps, "alice")
    token = (await login(client, "alice"))["SessionToken"]
    raw = await store_contents(app.settings.db)
    assert token.encode() not in raw
    assert await app.deps.store.session(hashlib.sha256(token.encode()).digest()) is not None


async def test_totp_users_must_pass_authenticate2fa_on_the_same_connection(
    app: App, client: Client, clock: Clock
) -> None:
    await make_user(app.deps, "bob", totp_secret=SECRET)
    reply = await login(client, "bob")
    # The password was right: Authenticated, but no session until the second step.
    assert reply["Authenticated"] is True and reply["SessionToken"] is None
    assert reply["User"] is None and reply["UserId"] is None
    assert (reply["Requires2FA"], reply["TwoFAType"], reply["AuthType"]) == (
        True,
        "Google",
        "Google",
    )
    assert len(reply["Pending2FaToken"]) >= 40
    wrong = (await client.call("Authenticate2FA", {"Code": "000000"})).o
    assert wrong["Authenticated"] is False and wrong["errormsg"] == "Invalid two-factor code"
    code = pyotp.TOTP(SECRET).at(int(clock()))
    ok = (await client.call("Authenticate2FA", {"Code": code})).o
    assert ok["Authenticated"] is True and ok["User"]["Use2FA"] is True
    assert ok["UserId"] == ok["User"]["UserId"] and ok["SessionToken"]


async def test_authenticate2fa_without_the_password_step_is_refused(
    app: App, client: Client, clock: Clock
) -> None:
    await make_user(app.deps, "bob", totp_secret=SECRET)
    async with await Client.connect(app.url) as other:
        await login(other, "bob")
    code = pyotp.TOTP(SECRET).at(int(clock()))
    reply = (await client.call("Authenticate2FA", {"Code": code})).o
    assert reply["Authenticated"] is False and reply["SessionToken"] is None


async def test_a_session_resumes_on_another_connection(app: App, client: Client) -> None:
    await make_user(app.deps, "alice")
    token = (await login(client, "alice"))["SessionToken"]
    async with await Client.connect(app.url) as other:
        reply = (await other.call("WebAuthenticateUser", {"SessionToken": token})).o
        assert reply["Authenticated"] is True and reply["User"]["UserName"] == "alice"
        assert (await other.call("LogOut")).o["result"] is True


async def test_a_session_expires_after_an_hour_without_activity(
    app: App, client: Client, clock: Clock
) -> None:
    await make_user(app.deps, "alice")
    token = (await login(client, "alice"))["SessionToken"]
    clock.advance(3599)
    async with await Client.connect(app.url) as other:
        assert (await other.call("WebAuthenticateUser", {"SessionToken": token})).o["Authenticated"]
    clock.advance(3599)  # activity at 3599 s kept it alive
    async with await Client.connect(app.url) as other:
        assert (await other.call("WebAuthenticateUser", {"SessionToken": token})).o["Authenticated"]
    clock.advance(3601)
    async with await Client.connect(app.url) as other:
        reply = (await other.call("WebAuthenticateUser", {"SessionToken": token})).o
        assert reply["Authenticated"] is False
        assert reply["errormsg"] == "Invalid or expired session token"


async def test_requests_on_the_connection_keep_the_session_alive(
    app: App, client: Client, clock: Clock
) -> None:
    await make_user(app.deps, "alice")
    token = (await login(client, "alice"))["SessionToken"]
    for _ in range(3):
        clock.advance(2000)
        await client.call("Ping")
    async with await Client.connect(app.url) as other:
        assert (await other.call("WebAuthenticateUser", {"SessionToken": token})).o["Authenticated"]


async def test_an_idle_connection_loses_its_session(app: App, client: Client, clock: Clock) -> None:
    await make_user(app.deps, "alice")
    await login(client, "alice")
    clock.advance(3601)
    assert (await client.call("LogOut")).o["errorcode"] == 20


async def test_logout_revokes_the_token(app: App, client: Client) -> None:
    await make_user(app.deps, "alice")
    token = (await login(client, "alice"))["SessionToken"]
    assert (await client.call("LogOut")).o == {
        "result": True,
        "errormsg": None,
        "errorcode": 0,
        "detail": None,
    }
    assert (await client.call("LogOut")).o["errorcode"] == 20
    reply = (await client.call("WebAuthenticateUser", {"SessionToken": token})).o
    assert reply["Authenticated"] is False


async def test_a_bogus_session_token_is_refused(client: Client) -> None:
    for token in ("", "x" * 43, None):
        reply = (await client.call("WebAuthenticateUser", {"SessionToken": token})).o
        assert reply["Authenticated"] is False and reply["SessionToken"] is None


async def test_locked_is_reported_only_to_a_caller_with_the_right_password(
    app: App, client: Client, clock: Clock
) -> None:
    user_id = await make_user(app.deps, "alice")
    from oms_auth.store import AuditEntry

    await app.deps.store.set_lock(user_id, clock() + 1800, AuditEntry(action="locked"))
    assert await login(client, "alice", "wrong") == FAILED
    reply = await login(client, "alice")
    assert reply["Authenticated"] is False and reply["Locked"] is True
    clock.advance(1801)
    assert (await login(client, "alice"))["Authenticated"] is True


async def test_inactive_and_federated_users_cannot_log_in_with_a_password(
    app: App, client: Client
) -> None:
    await make_user(app.deps, "gone", active=False)
    await make_user(app.deps, "fed", auth_source="saml")
    gone = await login(client, "gone")
    assert gone["Authenticated"] is False
    assert gone["errormsg"] == "Your request cannot be processed. Please contact support"
    assert (await login(client, "gone", "wrong")) == FAILED
    fed = await login(client, "fed")
    assert fed["Authenticated"] is False and "SAML" in fed["errormsg"]


async def test_repeated_failed_logins_are_refused_without_checking_the_password(
    app: App, client: Client
) -> None:
    await make_user(app.deps, "alice")
    for _ in range(app.settings.login_failures_per_user):
        assert await login(client, "alice", "wrong") == FAILED
    reply = await login(client, "alice")
    assert reply["Authenticated"] is False and reply["errormsg"].startswith("Too many failed")
    # The limit counts the submitted name: a missing user's name behaves the same.
    for _ in range(app.settings.login_failures_per_user):
        await login(client, "ghost", "wrong")
    assert (await login(client, "ghost", "wrong"))["errormsg"].startswith("Too many failed")


async def test_a_session_logged_out_elsewhere_ends_on_every_connection_within_a_minute(
    app: App, client: Client, clock: Clock
) -> None:
    await make_user(app.deps, "alice")
    token = (await login(client, "alice"))["SessionToken"]
    async with await Client.connect(app.url) as other:
        await other.call("WebAuthenticateUser", {"SessionToken": token})
        assert (await other.call("LogOut")).o["result"] is True
    clock.advance(61)
    await client.call("Ping")  # the next request finds the session gone
    assert (await client.call("LogOut")).o["errorcode"] == 20


async def test_web_authenticate_user_logs_in_with_a_username_and_password(
    app: App, client: Client
) -> None:
    user_id = await make_user(app.deps, "alice")
    reply = (
        await client.call("WebAuthenticateUser", {"UserName": "alice", "Password": PASSWORD})
    ).o
    # WebAuthenticateUser's top-level UserId is a decimal string (the official SDKs type it so).
    assert reply["Authenticated"] is True and reply["UserId"] == str(user_id)
    assert reply["User"]["UserId"] == user_id
    wrong = (await client.call("WebAuthenticateUser", {"username": "alice", "password": "x"})).o
    assert wrong == FAILED


async def test_lower_case_payload_keys_log_in_too(app: App, client: Client) -> None:
    await make_user(app.deps, "alice")
    reply = (await client.call("AuthenticateUser", {"username": "alice", "password": PASSWORD})).o
    assert reply["Authenticated"] is True
