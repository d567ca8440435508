"""The cases, in SPEC order. Each opens its own connections and states what it checks.

Importing this module registers them into :data:`.registry.CASES`, in the order below.
"""

from __future__ import annotations

import asyncio
import base64
import email
import hashlib
import hmac
import re
import secrets
import time
import urllib.error
import urllib.request
import uuid
from email import policy
from typing import Any

import orjson

from protocol.errors import ErrorCode

from .kit import CaseFunction, Failure, Options, Skip, expect
from .probe import Probe
from .registry import CASES, case

__all__: list[str] = []

SUCCESS = {"result": True, "errormsg": None, "errorcode": 0, "detail": None}
MAX_I = 2**63 - 1


def missing_name() -> str:
    return "conformance-" + secrets.token_hex(6)


def check_refusal(answer: dict[str, Any], m: int, code: int, detail: str | None = None) -> None:
    """An answer is a standard response refusing with ``code`` (exact texts)."""
    expect(answer.get("m") == m, f"expected m={m}, got m={answer.get('m')}")
    expect(isinstance(answer.get("o_raw"), str), "o must be a JSON document encoded as a string")
    o = answer.get("o")
    expect(isinstance(o, dict), "o must hold a standard response object")
    assert isinstance(o, dict)
    expect(
        set(o) >= {"result", "errormsg", "errorcode", "detail"},
        f"standard response keys missing: {sorted(o)}",
    )
    expect(o["result"] is False, "result must be false")
    expect(o["errorcode"] == code, f"expected errorcode {code}, got {o['errorcode']}")
    text = ErrorCode(code).text
    expect(o["errormsg"] == text, f"errormsg must be {text!r}, got {o['errormsg']!r}")
    if detail is not None:
        expect(o["detail"] == detail, f"detail must be {detail!r}, got {o['detail']!r}")
    else:
        expect(bool(o["detail"]), "detail must name the problem")


def check_success(answer: dict[str, Any]) -> None:
    expect(answer.get("m") == 1, f"expected an m=1 reply, got m={answer.get('m')}")
    expect(answer.get("o") == SUCCESS, f"expected the success response, got {answer.get('o')!r}")


async def still_serving(p: Probe) -> None:
    """The connection stays open after an m=5: a Ping still gets its answer."""
    pong = await p.call("Ping", i=424242)
    expect(pong.get("m") == 1, "the connection stopped serving after the frame")


# -- SPEC 1: framing -------------------------------------------------------------------------


@case("ping", "Ping answers m=1 {msg: PONG}, echoing i and n, o as a string")
async def _ping(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        answer = await p.call("Ping", i=0)
        expect(answer["m"] == 1, f"expected m=1, got m={answer['m']}")
        expect(isinstance(answer["o_raw"], str), "o must be a JSON string")
        expect(answer["o"] == {"msg": "PONG"}, f"expected {{'msg': 'PONG'}}, got {answer['o']!r}")


@case("i-range", "i from 0 to 2^63-1 is echoed exactly")
async def _i_range(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        for i in (0, 1, 2**53 + 1, MAX_I):
            answer = await p.call("Ping", i=i)
            expect(answer["m"] == 1, f"i={i}: expected m=1")


@case("name-case", "function names match case-insensitively and n is echoed as sent")
async def _name_case(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        answer = await p.call("pInG")
        expect(answer["m"] == 1 and answer["o"] == {"msg": "PONG"}, "pInG must be Ping")


@case("o-forms", "o may be an object or missing; answers carry o as a string")
async def _o_forms(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        await p.send({"m": 0, "i": 2, "n": "Ping", "o": {}})
        a = await p.recv()
        await p.send({"m": 0, "i": 4, "n": "Ping"})
        b = await p.recv()
    for answer in (a, b):
        expect(answer.get("m") == 1 and answer.get("o") == {"msg": "PONG"}, "expected PONG")
        expect(isinstance(answer.get("o_raw"), str), "o must be a JSON string")


UNROUTABLE = [
    ("not-json", "text that is not JSON", "}{", 100, 0, ""),
    ("not-object", "a JSON array", "[1, 2]", 100, 0, ""),
    ("missing-i", "a frame without i", '{"m":0,"n":"Ping","o":"{}"}', 100, 0, "Ping"),
    ("i-mistyped", "i as a string", '{"m":0,"i":"7","n":"Ping","o":"{}"}', 100, 0, "Ping"),
    ("n-mistyped", "n as a number", '{"m":0,"i":7,"n":7,"o":"{}"}', 100, 7, ""),
    ("o-not-json", "o that is not JSON", '{"m":0,"i":7,"n":"Ping","o":"{x"}', 100, 7, "Ping"),
    ("o-not-object", "o holding an array", '{"m":0,"i":7,"n":"Ping","o":"[1]"}', 100, 7, "Ping"),
    (
        "unknown-function",
        "an unknown function",
        '{"m":0,"i":7,"n":"NoSuchFunction","o":"{}"}',
        104,
        7,
        "NoSuchFunction",
    ),
    ("m-out-of-range", "m=9", '{"m":9,"i":7,"n":"Ping","o":"{}"}', 106, 7, "Ping"),
    (
        "m-unsupported",
        "m=2 (subscribe) on ResetPassword",
        '{"m":2,"i":7,"n":"ResetPassword","o":"{}"}',
        106,
        7,
        "ResetPassword",
    ),
]


def _unroutable(data: str, code: int, i: int, n: str) -> CaseFunction:
    async def run(options: Options, evidence: list[str]) -> None:
        async with Probe(options, evidence) as p:
            await p.send(data)
            answer = await p.recv()
            check_refusal(answer, 5, code)
            expect(
                (answer.get("i"), answer.get("n")) == (i, n),
                f"expected i={i}, n={n!r}; got i={answer.get('i')!r}, n={answer.get('n')!r}",
            )
            await still_serving(p)

    return run


for _name, _what, _data, _code, _i, _n in UNROUTABLE:
    CASES.add(
        f"m5-{_name}",
        f"{_what}: m=5, code {_code}, connection stays open",
        _unroutable(_data, _code, _i, _n),
    )


@case("m5-binary", "a binary frame: m=5, code 100, connection stays open")
async def _binary(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        await p.send(b'{"m":0,"i":1,"n":"Ping","o":"{}"}')
        check_refusal(await p.recv(), 5, 100)
        await still_serving(p)


@case("m1-business-error", "a function's refusal is an m=1 reply (ResetPassword, no UserName)")
async def _business(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        check_refusal(
            await p.call("ResetPassword", {}), 1, 100, "Invalid value provided for Username"
        )


@case("m1-wrong-key-type", "a payload key of the wrong type: m=1, code 100 naming the key")
async def _wrong_key(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        answer = await p.call("ResetPassword", {"UserName": 12345})
        check_refusal(answer, 1, 100)
        expect("UserName" in answer["o"]["detail"], "the detail must name UserName")


@case("concurrent-answers", "twenty requests sent at once get twenty answers, matched by i")
async def _concurrent(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        for i in range(100, 140, 2):
            await p.send({"m": 0, "i": i, "n": "Ping", "o": "{}"})
        seen = []
        for _ in range(20):
            seen.append(int((await p.recv()).get("i") or -1))
        seen.sort()
        expect(seen == list(range(100, 140, 2)), f"answers for i {seen}")


@case("frame-size-limit", "a frame over 64 KiB closes the connection with 1009")
async def _size(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        await p.send(
            {"m": 0, "i": 1, "n": "Ping", "o": orjson.dumps({"pad": "x" * 70_000}).decode()}
        )
        code = await p.close_code()
        expect(code == 1009, f"expected close code 1009, got {code}")


# -- SPEC 2: logging in ----------------------------------------------------------------------

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


@case("login-key-case", "payload keys match case-insensitively (username, password)")
async def _key_case(options: Options, evidence: list[str]) -> None:
    creds = options.trader or options.operator
    if creds is None:
        raise Skip("needs --trader USER:PASS")
    async with Probe(options, evidence) as p:
        answer = await p.call("AuthenticateUser", {"username": creds[0], "password": creds[1]})
        expect(answer["o"].get("Authenticated") is True, "lower-case keys did not log in")


@case(
    "web-login-password", "WebAuthenticateUser {UserName, Password} logs in like AuthenticateUser"
)
async def _web_login(options: Options, evidence: list[str]) -> None:
    creds = options.trader or options.operator
    if creds is None:
        raise Skip("needs --trader USER:PASS")
    async with Probe(options, evidence) as p:
        answer = await p.call("WebAuthenticateUser", {"UserName": creds[0], "Password": creds[1]})
        o = answer["o"]
        expect(o.get("Authenticated") is True, "WebAuthenticateUser with a password failed")
        expect(isinstance(o.get("UserId"), int), "no top-level UserId")


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


@case("apikey-login", "an API key logs in with its signature; a replayed nonce does not")
async def _api_key(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        reply = await p.login(options.trader or options.operator, "trader")
        added = await p.call("AddUserAPIKey", {"UserId": reply["UserId"], "Permissions": []})
        key = added["o"]
        expect(isinstance(key, dict) and bool(key.get("APIKey") and key.get("APISecret")), "no key")
        try:
            nonce, uid = str(int(time.time() * 1000)), str(reply["UserId"])
            message = (nonce + uid + key["APIKey"]).encode()
            signature = hmac.new(key["APISecret"].encode(), message, hashlib.sha256).hexdigest()
            login = {"APIKey": key["APIKey"], "Signature": signature, "UserId": uid, "Nonce": nonce}
            async with Probe(options, evidence) as bot:
                first = await bot.call("AuthenticateUser", login)
                expect(first["o"].get("Authenticated") is True, "the signed login failed")
                again = await bot.call("AuthenticateUser", login)
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
    creds = options.trader or options.operator
    if creds is None:
        raise Skip("needs --trader USER:PASS")
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


# -- SPEC 3: who may start a reset --------------------------------------------------------------


async def refuses_missing_user(p: Probe, code: int, detail: str) -> None:
    """ResetPassword on p's session, for a user that does not exist, is refused with ``code``."""
    check_refusal(await p.call("ResetPassword", {"UserName": missing_name()}), 1, code, detail)


@case("reset-self-service-uniform", "self-service ResetPassword answers success for anyone")
async def _self_service(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        a = await p.call("ResetPassword", {"UserName": missing_name()})
        check_success(a)
        if options.target:
            b = await p.call("ResetPassword", {"UserName": options.target})
            expect(
                b["o_raw"] == a["o_raw"], "an existing user's answer differs from a missing user's"
            )


@case("reset-operator", "an Operator asking for a missing user gets 104 Username does not exist")
async def _operator(options: Options, evidence: list[str]) -> None:
    # Its success for a real user is shown by reset-link, which mails the target: the server
    # allows few requests per user and hour, so this case does not spend one.
    async with Probe(options, evidence) as p:
        await p.login(options.operator, "operator")
        await refuses_missing_user(p, 104, "Username does not exist")


@case("reset-trading", "a Trading user resets itself; a user outside its accounts is 20")
async def _trading(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        await p.login(options.trader, "trader")
        await refuses_missing_user(
            p, 20, "You do not have permission to request password reset for this user"
        )
        assert options.trader is not None
        check_success(await p.call("ResetPassword", {"UserName": options.trader[0]}))


@case("unlock-needs-operator", "UnlockUser without an Operator session is 20")
async def _unlock(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        check_refusal(await p.call("UnlockUser", {"UserId": 1}), 1, 20)


# -- SPEC 4: the engine ---------------------------------------------------------------------------

INVALID_KEY = "Invalid password recovery key"
TOTP_REQUIRED = "Time-based One Time Password authentication is required to log in with this user"


@case("reset2-payload", "ResetPassword2 without a password is 100, before the code is looked at")
async def _reset2_payload(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        check_refusal(
            await p.call("ResetPassword2", {"UserId": 1, "PendingCode": "x"}),
            1,
            100,
            "Invalid value provided for Password",
        )


@case("reset2-invalid-code", "an unknown PendingCode is 104 in every function that takes one")
async def _invalid_code(options: Options, evidence: list[str]) -> None:
    code = str(uuid.uuid4())
    async with Probe(options, evidence) as p:
        check_refusal(
            await p.call(
                "ResetPassword2", {"UserId": 1, "Password": "Abcdefgh1!x", "PendingCode": code}
            ),
            1,
            104,
            INVALID_KEY,
        )
        for name in ("GetUserIdForPasswordSet", "GetRequirementsForPasswordSet"):
            check_refusal(await p.call(name, {"PendingCode": code}), 1, 104, INVALID_KEY)


async def mailed_link(options: Options, p: Probe, *, fresh: bool = False) -> tuple[int, str, str]:
    """The target's latest reset link: asked for as the Operator (unless this run already has
    one and ``fresh`` is not asked) and read from the Maildir."""
    if options.maildir is None:
        raise Skip("needs --mail maildir:PATH")
    await run_target(options, p)
    await p.login(options.operator, "operator")
    if options.latest_link is not None and not fresh:
        p.note("@ reusing this run's latest link for the target")
        return options.latest_link
    options.latest_link = await _request_link(options, p)
    return options.latest_link


async def _request_link(options: Options, p: Probe) -> tuple[int, str, str]:
    before = _mail_files(options)
    check_success(await p.call("ResetPassword", {"UserName": await run_target(options, p)}))
    return await _link_mailed(options, p, before)


async def run_target(options: Options, p: Probe) -> str:
    """The user the reset cases mail links to: ``--target``, else one this run creates (with a
    security question, so the lockout case has one to answer wrongly)."""
    if options.target:
        return options.target
    if options.own_target is None:
        _, name = await invited_user(options, p)
        async with Probe(options, p.evidence) as own:
            await own.login((name, NEW_USER_PASSWORD), "the run's own target")
            question = [{"Question": "Conformance question?", "Answer": "conformance answer"}]
            payload = {"Password": NEW_USER_PASSWORD, "Questions": question}
            check_success(await own.call("SetSecurityQuestions", payload))
        options.own_target = name
        p.note(f"@ this run's own reset target: {name}")
    return options.own_target


def _mail_files(options: Options) -> set[Any]:
    assert options.maildir is not None
    new = options.maildir / "new"
    return set(new.iterdir()) if new.exists() else set()


async def _link_mailed(
    options: Options, p: Probe, before: set[Any], to: str | None = None
) -> tuple[int, str, str]:
    """The link of the first message (to ``to``, when given) that arrived since ``before`` and
    still holds a live code. A message an earlier request queued can arrive after ``before``
    (its delivery lagged): its code was voided by the newer request, so it is passed over."""
    seen: set[Any] = set(before)
    for _ in range(int(options.timeout * 20)):
        for path in sorted(_mail_files(options) - seen):
            seen.add(path)
            found = _link_in(path, to)
            if found is None:
                continue
            answer = await p.call("GetUserIdForPasswordSet", {"PendingCode": found[3]})
            if isinstance(answer["o"], dict) and "UserId" in answer["o"]:
                p.note(f"@ mail with link {found[1]}")
                return int(found[2]), found[3], found[1]
            p.note("@ passed over an older message whose code a newer request voided")
        await asyncio.sleep(0.05)
    raise Failure("no email with a live reset link arrived in the Maildir")


def _link_in(path: Any, to: str | None) -> re.Match[str] | None:
    """The reset link in a Maildir message (to ``to``, when given), else None."""
    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    if to is not None and msg["To"] != to:
        return None
    body = msg.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    return re.search(r"(\S+/reset\?UserId=(\d+)&PendingCode=([0-9A-Za-z-]+))", text)


@case("reset-link", "the emailed link's code looks up the user and is not used up by reading it")
async def _link(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        user_id, code, link = await mailed_link(options, p)
        for _ in range(2):
            answer = await p.call("GetUserIdForPasswordSet", {"PendingCode": code})
            expect(answer["o"] == {"UserId": user_id}, f"expected UserId {user_id}")
        await asyncio.to_thread(_fetch, link)  # what a mail scanner does
        p.note(f"> GET {link.split('?')[0]}?... (as a mail scanner would)")
        req = await p.call("GetRequirementsForPasswordSet", {"PendingCode": code})
        keys = {
            "UserId",
            "SecurityQuestion",
            "Requires2FA",
            "TwoFAType",
            "PasswordRules",
            "ExpiresAt",
        }
        expect(keys <= set(req["o"]), f"requirements lack {sorted(keys - set(req['o']))}")
        weak = await p.call(
            "ResetPassword2", {"UserId": str(user_id), "Password": "short", "PendingCode": code}
        )
        check_refusal(weak, 1, *_first_refusal(req["o"]))


def _first_refusal(requirements: dict[str, Any]) -> tuple[int, str | None]:
    if requirements.get("SecurityQuestion"):
        return 20, "Invalid answer provided for security question"
    if requirements.get("Requires2FA"):
        return (
            20,
            "Time-based One Time Password authentication is required to log in with this user",
        )
    return 100, None


def _fetch(link: str) -> None:
    try:
        urllib.request.urlopen(link, timeout=10).read()
    except OSError:
        pass  # the page may live elsewhere; the code must survive either way


@case("reset-newer-voids-older", "a newer reset code voids the older one")
async def _newer(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        _, first, _ = await mailed_link(options, p)
        _, second, _ = await mailed_link(options, p, fresh=True)
        check_refusal(
            await p.call("GetUserIdForPasswordSet", {"PendingCode": first}), 1, 104, INVALID_KEY
        )
        expect(
            "UserId" in (await p.call("GetUserIdForPasswordSet", {"PendingCode": second}))["o"],
            "the newer code failed",
        )


@case("reset-lockout", "five wrong answers lock the target (101); an Operator unlocks it")
async def _lockout(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        user_id, code, _ = await mailed_link(options, p)
        req = (await p.call("GetRequirementsForPasswordSet", {"PendingCode": code}))["o"]
        if not req.get("SecurityQuestion"):
            raise Skip("the target has no security question to answer wrongly")
        payload = {
            "UserId": user_id,
            "Password": "Conformance-Pass9",
            "PendingCode": code,
            "SecurityQuestionAnswer": "certainly-not-" + secrets.token_hex(4),
        }
        for _ in range(5):
            check_refusal(
                await p.call("ResetPassword2", payload),
                1,
                20,
                "Invalid answer provided for security question",
            )
        check_refusal(
            await p.call("ResetPassword2", payload),
            1,
            101,
            "Account has been locked for 30 minutes",
        )
        check_success(await p.call("UnlockUser", {"UserId": user_id}))
        check_refusal(
            await p.call("ResetPassword2", payload),
            1,
            20,
            "Invalid answer provided for security question",
        )
        check_success(await p.call("UnlockUser", {"UserId": user_id}))  # leave it unlocked


# -- SPEC 2a: the account functions around a reset --------------------------------------------

NEW_USER_PASSWORD = "Conformance-Pass9"


async def invited_user(options: Options, p: Probe) -> tuple[int, str]:
    """A user made for this case: CreateUser as the Operator, its invitation read from the
    Maildir, its first password set by ResetPassword2. Every run makes its own, so runs repeat
    against one server; the user's name and UserId."""
    if options.maildir is None:
        raise Skip("needs --mail maildir:PATH")
    await p.login(options.operator, "operator")
    name = missing_name()
    address = f"{name}@example.test"
    before = _mail_files(options)
    created = await p.call("CreateUser", {"UserName": name, "Email": address})
    user_id = created["o"].get("UserId") if isinstance(created["o"], dict) else None
    if not isinstance(user_id, int):
        raise Failure(f"CreateUser did not answer a UserId: {created['o']!r}")
    linked, code, _ = await _link_mailed(options, p, before, to=address)
    expect(linked == user_id, "the invitation's link names another user")
    async with Probe(options, p.evidence) as anonymous:
        refused = await anonymous.call("AuthenticateUser", {"UserName": name, "Password": "x"})
        expect(refused["o"].get("Authenticated") is False, "an invited user logged in")
        payload = {"UserId": str(user_id), "PendingCode": code, "Password": NEW_USER_PASSWORD}
        check_success(await anonymous.call("ResetPassword2", payload))
    return user_id, name


@case("create-user-invitation", "CreateUser mails a link that sets the user's first password")
async def _create_user(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        _, name = await invited_user(options, p)
        async with Probe(options, evidence) as q:
            reply = await q.login((name, NEW_USER_PASSWORD), "invited user")
            expect(reply.get("User", {}).get("UserName") == name, "not the invited user")
        async with Probe(options, evidence) as anonymous:
            check_refusal(
                await anonymous.call("CreateUser", {"UserName": name, "Email": "x@example.test"}),
                1,
                20,
            )


@case("totp-enrolment", "EnableGoogle2FA is active after Authenticate2FA; Disable2FA ends it")
async def _totp_enrolment(options: Options, evidence: list[str]) -> None:
    import pyotp

    async with Probe(options, evidence) as p:
        _, name = await invited_user(options, p)
    async with Probe(options, evidence) as c:
        await c.login((name, NEW_USER_PASSWORD), "invited user")
        enrolled = (await c.call("EnableGoogle2FA", {}))["o"]
        uri = enrolled.get("GoogleQRCode", "") if isinstance(enrolled, dict) else ""
        expect(uri.startswith("otpauth://totp/"), f"no otpauth URI: {enrolled!r}")
        secret = enrolled["ManualCode"]
        async with Probe(options, evidence) as other:
            first = await other.call(
                "AuthenticateUser", {"UserName": name, "Password": NEW_USER_PASSWORD}
            )
            expect(first["o"].get("Requires2FA") is False, "TOTP was active before its first code")
        done = (await c.call("Authenticate2FA", {"Code": pyotp.TOTP(secret).now()}))["o"]
        expect(done.get("Authenticated") is True, f"the first code was refused: {done!r}")
        expect((done.get("User") or {}).get("Use2FA") is True, "Use2FA is not true after it")
        async with Probe(options, evidence) as other:
            second = await other.call(
                "AuthenticateUser", {"UserName": name, "Password": NEW_USER_PASSWORD}
            )
            expect(second["o"].get("Requires2FA") is True, "a login does not ask for the code")
        check_success(await c.call("Disable2FA", {}))  # right after a 2FA on this connection
        async with Probe(options, evidence) as other:
            third = await other.call(
                "AuthenticateUser", {"UserName": name, "Password": NEW_USER_PASSWORD}
            )
            expect(third["o"].get("Requires2FA") is False, "TOTP still asked after Disable2FA")


@case(
    "security-questions",
    "SetSecurityQuestions needs the password; GetSecurityQuestions shows texts",
)
async def _security_questions(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        _, name = await invited_user(options, p)
    async with Probe(options, evidence) as c:
        await c.login((name, NEW_USER_PASSWORD), "invited user")
        questions = [{"Question": "Conformance question?", "Answer": "conformance answer"}]
        wrong = {"Password": "Not-The-Password1", "Questions": questions}
        check_refusal(await c.call("SetSecurityQuestions", wrong), 1, 20)
        check_refusal(
            await c.call("SetSecurityQuestions", {"Password": NEW_USER_PASSWORD, "Questions": []}),
            1,
            100,
        )
        ok = {"Password": NEW_USER_PASSWORD, "Questions": questions}
        check_success(await c.call("SetSecurityQuestions", ok))
        shown = (await c.call("GetSecurityQuestions", {}))["o"]
        expect(shown == {"Questions": ["Conformance question?"]}, f"not the texts: {shown!r}")


@case("force-user-logoff", "ForceUserLogoff ends every session of the user with a LogoutEvent")
async def _force_logoff(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        user_id, name = await invited_user(options, p)
        async with Probe(options, evidence) as a, Probe(options, evidence) as b:
            for c in (a, b):
                await c.login((name, NEW_USER_PASSWORD), "invited user")
            check_success(await p.call("ForceUserLogoff", {"UserId": user_id}))
            for c in (a, b):
                event = await c.event()
                expect(event.get("n") == "LogoutEvent", f"no LogoutEvent: {event!r}")
                check_refusal(await c.call("GetUserInfo", {}), 1, 20)


@case("locked-users", "GetLockedUsers answers the Operator a list; others are refused with 20")
async def _locked_users(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        await p.login(options.operator, "operator")
        listed = await p.call("GetLockedUsers", {})
        expect(listed["m"] == 1 and isinstance(listed["o"], list), "GetLockedUsers: no list")
        for user in listed["o"]:
            keys = {"UserId", "UserName", "Email", "LockedDateTime", "LockedUntil"}
            expect(keys <= set(user), f"a locked user lacks {sorted(keys - set(user))}")
    async with Probe(options, evidence) as anonymous:
        check_refusal(await anonymous.call("GetLockedUsers", {}), 1, 20)
