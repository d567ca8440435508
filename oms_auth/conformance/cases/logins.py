"""Logging in: the login reply, sessions, API keys, the HTTP gateway
(docs/protocol.md, "The login reply", "AuthenticateUser", "The HTTP gateway: /AP/")."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import urllib.error
import urllib.request
from typing import Any

import orjson

from ..kit import Failure, Options, Skip, expect
from ..probe import Probe
from ..registry import case
from .checks import check_refusal, check_success, missing_name

__all__: list[str] = []


FAILED_LOGIN = "Invalid username or password"


@case("login-failure-uniform", "a missing user and a wrong password answer alike")
async def _login_uniform(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        missing = await p.call(
            "AuthenticateUser", {"UserName": missing_name(), "Password": "Wrong-Pass-1"}
        )
        expect(missing["m"] == 1, "expected m=1")
        o = missing["o"]
        expect(
            o.get("Authenticated") is False
            and o.get("User") is None
            and o.get("errormsg") == FAILED_LOGIN,
            f"unexpected failed login reply {o!r}",
        )
        if options.operator:
            wrong = await p.call(
                "AuthenticateUser", {"UserName": options.operator[0], "Password": "Wrong-Pass-1"}
            )
            expect(wrong["o"] == o, "a wrong password must answer exactly like a missing user")


@case("login-session", "login gives a token; it resumes on another connection; LogOut ends it")
async def _session(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        reply = await p.login(options.trader or options.operator, "trader")
        expect(bool(reply.get("SessionToken")), "no SessionToken")
        user = reply.get("User") or {}
        keys = {"UserId", "UserName", "Email", "EmailVerified", "AccountId", "OMSId", "Use2FA"}
        expect(keys <= set(user), f"User lacks {sorted(keys - set(user))}")
        token = reply["SessionToken"]
        async with Probe(options, evidence) as q:
            resumed = await q.call("WebAuthenticateUser", {"SessionToken": token})
            expect(resumed["o"].get("Authenticated") is True, "the token did not resume")
            # As the official SDKs type it: a decimal string (User.UserId stays an integer).
            expect(resumed["o"].get("UserId") == str(reply.get("UserId")), "UserId not a string")
            check_success(await q.call("LogOut"))
            check_refusal(await q.call("LogOut"), 1, 20)
        async with Probe(options, evidence) as r:
            again = await r.call("WebAuthenticateUser", {"SessionToken": token})
            expect(again["o"].get("Authenticated") is False, "a logged-out token still resumes")


LOGIN_KEYS = {
    "Authenticated",
    "SessionToken",
    "UserId",
    "User",
    "Locked",
    "Requires2FA",
    "TwoFAType",
    "AuthType",
    "TwoFAToken",
    "Pending2FaToken",
    "AddtlInfo",
    "errormsg",
}


@case("login-reply-shape", "the login reply has every key deployed clients read, UserId on top")
async def _login_shape(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        reply = await p.login(options.trader or options.operator, "trader")
        expect(LOGIN_KEYS <= set(reply), f"login reply lacks {sorted(LOGIN_KEYS - set(reply))}")
        user = reply.get("User") or {}
        expect(reply.get("UserId") == user.get("UserId"), "UserId on top differs from User.UserId")
        expect(not reply.get("errormsg"), "a successful login carries an errormsg")
        failed = await p.call(
            "AuthenticateUser", {"UserName": missing_name(), "Password": "Wrong-Pass-1"}
        )
        o = failed["o"]
        expect(LOGIN_KEYS <= set(o), f"failed login reply lacks {sorted(LOGIN_KEYS - set(o))}")
        expect(o.get("UserId") is None, "a failed login names a UserId")


def _credentials(options: Options) -> tuple[str, str]:
    """A user's to log in with: the trader's, else the Operator's; the case is skipped without."""
    creds = options.trader or options.operator
    if creds is None:
        raise Skip("needs --trader USER:PASS")
    return creds


@case("login-key-case", "payload keys match case-insensitively (username, password)")
async def _key_case(options: Options, evidence: list[str]) -> None:
    creds = _credentials(options)
    async with Probe(options, evidence) as p:
        answer = await p.call("AuthenticateUser", {"username": creds[0], "password": creds[1]})
        expect(answer["o"].get("Authenticated") is True, "lower-case keys did not log in")


@case(
    "web-login-password", "WebAuthenticateUser {UserName, Password} logs in like AuthenticateUser"
)
async def _web_login(options: Options, evidence: list[str]) -> None:
    creds = _credentials(options)
    async with Probe(options, evidence) as p:
        answer = await p.call("WebAuthenticateUser", {"UserName": creds[0], "Password": creds[1]})
        o = answer["o"]
        expect(o.get("Authenticated") is True, "WebAuthenticateUser with a password failed")
        user_id = (o.get("User") or {}).get("UserId")
        expect(o.get("UserId") == str(user_id), "the top-level UserId is not a decimal string")


@case("user-info", "after login GetUserInfo, GetUserPermissions, GetUserAccounts answer m=1")
async def _user_info(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as anonymous:
        check_refusal(await anonymous.call("GetUserInfo", {}), 1, 20)
    async with Probe(options, evidence) as p:
        reply = await p.login(options.trader or options.operator, "trader")
        info = await p.call("GetUserInfo", {})
        expect(info["m"] == 1, "GetUserInfo is not an m=1 reply")
        o = info["o"]
        expect(isinstance(o, dict) and o.get("UserId") == reply.get("UserId"), "not the user")
        expect(isinstance(o.get("Permissions"), list), "no Permissions list")
        expect(isinstance(o.get("AccountIds"), list), "no AccountIds list")
        perms = await p.call("GetUserPermissions", {"UserId": reply.get("UserId")})
        expect(perms["m"] == 1 and isinstance(perms["o"], list), "GetUserPermissions: no list")
        accounts = await p.call("GetUserAccounts", {"OMSId": 1})
        expect(accounts["m"] == 1 and isinstance(accounts["o"], list), "GetUserAccounts: no list")


def _signed(key: dict[str, Any], uid: str, nonce: str) -> dict[str, str]:
    message = (nonce + uid + key["APIKey"]).encode()
    signature = hmac.new(key["APISecret"].encode(), message, hashlib.sha256).hexdigest()
    return {"APIKey": key["APIKey"], "Signature": signature, "UserId": uid, "Nonce": nonce}


@case(
    "apikey-login",
    "an API key logs in with any random nonce (not increasing, not only digits), each only once",
)
async def _api_key(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        reply = await p.login(options.trader or options.operator, "trader")
        added = await p.call("AddUserAPIKey", {"UserId": reply["UserId"], "Permissions": []})
        key = added["o"]
        expect(isinstance(key, dict) and bool(key.get("APIKey") and key.get("APISecret")), "no key")
        try:
            uid = str(reply["UserId"])
            # As the official SDKs draw them: random, so a later one is often smaller.
            high = str(secrets.randbelow(10**8) + 9 * 10**8)
            nonces = [high, str(secrets.randbelow(10**6)), secrets.token_urlsafe(16)]
            async with Probe(options, evidence) as bot:
                for nonce in nonces:
                    login = await bot.call("AuthenticateUser", _signed(key, uid, nonce))
                    expect(login["o"].get("Authenticated") is True, "a random nonce was refused")
                again = await bot.call("AuthenticateUser", _signed(key, uid, high))
                expect(again["o"].get("Authenticated") is False, "a replayed nonce logged in")
        finally:
            await p.call("RemoveUserAPIKey", {"UserId": reply["UserId"], "APIKey": key["APIKey"]})


def _http_base(options: Options) -> str:
    scheme, _, rest = options.url.partition("://")
    host = rest.split("/", 1)[0]
    return ("https" if scheme == "wss" else "http") + "://" + host


def _http(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One GET: its status and JSON body (a body that is not JSON fails the case)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, orjson.loads(body or b"null")
    except orjson.JSONDecodeError:
        detail = f"GET {url.split('?')[0]} answered {status} with a body that is not JSON"
        raise Failure(detail) from None


@case("http-gateway", "/AP/Ping answers PONG; an unknown /AP/ function is HTTP 404 with 104")
async def _http_gateway(options: Options, evidence: list[str]) -> None:
    base = _http_base(options)
    status, pong = await asyncio.to_thread(_http, base + "/AP/Ping")
    evidence.append(f"GET /AP/Ping -> {status} {pong}")
    expect(status == 200 and pong == {"msg": "PONG"}, "GET /AP/Ping did not answer PONG")
    status, missing = await asyncio.to_thread(_http, base + "/AP/" + missing_name())
    evidence.append(f"GET /AP/<unknown> -> {status} {missing}")
    expect(status == 404 and isinstance(missing, dict), "an unknown function is not HTTP 404")
    expect(missing.get("errorcode") == 104, "an unknown function is not errorcode 104")


@case("http-session", "Basic /AP/Authenticate gives a token; APToken calls run as that user")
async def _http_session(options: Options, evidence: list[str]) -> None:
    creds = _credentials(options)
    base = _http_base(options)
    basic = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    status, login = await asyncio.to_thread(
        _http, base + "/AP/Authenticate", {"Authorization": "Basic " + basic}
    )
    evidence.append(f"GET /AP/Authenticate -> {status} Authenticated={login.get('Authenticated')}")
    expect(status == 200 and login.get("Authenticated") is True, "Basic authentication failed")
    status, info = await asyncio.to_thread(
        _http, base + "/AP/GetUserInfo", {"APToken": login["SessionToken"]}
    )
    expect(status == 200 and info.get("UserId") == login.get("UserId"), "APToken call failed")
