"""docs/protocol.md, "The HTTP gateway: /AP/": the HTTP gateway /AP/{Function} over the same
function table, with every rule as on the WebSocket (the same cases run through both)."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from http.client import HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pyotp
import pytest

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, settings_for
from .test_deployment import private_ca

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"


async def http(
    app: App,
    method: str,
    path: str,
    *,
    query: dict[str, Any] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
) -> tuple[int, Any]:
    """One request over a real socket; the status and the parsed JSON body (None if empty).
    ``headers`` as a list may name a header twice."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    target = path + ("?" + urlencode(query) if query else "")
    head = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{app.port}", "Connection: close"]
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    head += [f"{k}: {v}" for k, v in pairs]
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, content = rest.partition(b"\r\n\r\n")
    if not content:
        return int(status_line.split()[1]), None
    try:
        return int(status_line.split()[1]), orjson.loads(content)
    except orjson.JSONDecodeError:
        return int(status_line.split()[1]), content.decode()  # a plain-text refusal


def basic(username: str, password: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    }


async def test_ping_and_an_unknown_function(app: App) -> None:
    assert await http(app, "GET", "/AP/Ping") == (200, {"msg": "PONG"})
    status, answer = await http(app, "GET", "/ap/NoSuchThing")
    assert status == 404 and (answer["errorcode"], answer["errormsg"]) == (
        104,
        "Resource Not Found",
    )
    status, _ = await http(app, "HEAD", "/AP/Ping")
    assert status == 405  # HEAD would run the function: refused


async def test_basic_authentication_then_calls_with_the_aptoken(app: App) -> None:
    uid = await make_user(app.deps, "trader", accounts=[10], permissions=["Trading"])
    status, login = await http(
        app, "GET", "/AP/Authenticate", query={"grant_type": "x"}, headers=basic("trader", PASSWORD)
    )
    assert status == 200 and login["Authenticated"] is True and login["UserId"] == uid
    token = {"APToken": login["SessionToken"]}
    assert (await http(app, "GET", "/AP/GetUserAccounts", query={"omsId": 1}, headers=token)) == (
        200,
        [10],
    )
    status, info = await http(app, "POST", "/AP/GetUserInfo", body=b'{"OMSId":1}', headers=token)
    assert status == 200 and info["UserName"] == "trader"
    status, refused = await http(app, "GET", "/AP/GetUserInfo", headers={"aptoken": "nope"})
    assert status == 401 and refused["errorcode"] == 20
    _, wrong = await http(app, "GET", "/AP/Authenticate", headers=basic("trader", "nope"))
    assert wrong["Authenticated"] is False and wrong["errormsg"] == "Invalid username or password"
    _, bare = await http(app, "GET", "/AP/Authenticate")
    assert bare["Authenticated"] is False and "Basic" in bare["errormsg"]


async def test_a_totp_login_finishes_with_the_pending2fatoken_header(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "bob", totp_secret=SECRET)
    _, step = await http(app, "GET", "/AP/Authenticate", headers=basic("bob", PASSWORD))
    assert step["Requires2FA"] is True and step["SessionToken"] is None
    pending = {"Pending2FaToken": step["Pending2FaToken"]}
    code = pyotp.TOTP(SECRET).at(clock.now)
    _, done = await http(app, "GET", "/AP/Authenticate2FA", query={"Code": code}, headers=pending)
    assert done["Authenticated"] is True and done["SessionToken"]
    _, again = await http(app, "GET", "/AP/Authenticate2FA", query={"Code": code}, headers=pending)
    assert again["Authenticated"] is False  # single use


async def test_a_recovery_code_is_refused_over_get_and_taken_by_post(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "bob", totp_secret=SECRET)
    async with await Client.connect(app.url) as c:
        await c.call("AuthenticateUser", {"UserName": "bob", "Password": PASSWORD})
        await c.call("Authenticate2FA", {"Code": pyotp.TOTP(SECRET).at(clock.now)})
        codes = (await c.call("CreateRecoveryCodes", {})).o["RecoveryCodes"]
    _, step = await http(app, "GET", "/AP/Authenticate", headers=basic("bob", PASSWORD))
    pending = {"Pending2FaToken": step["Pending2FaToken"]}
    for function in ("Authenticate2FA", "Disable2FA", "authenticate2fa"):
        status, refused = await http(
            app, "GET", f"/AP/{function}", query={"code": codes[0]}, headers=pending
        )
        assert status == 405 and refused["errorcode"] == 106, refused
    body = orjson.dumps({"Code": codes[0]})
    _, done = await http(app, "POST", "/AP/Authenticate2FA", body=body, headers=pending)
    assert done["Authenticated"] is True and done["SessionToken"]


async def test_post_bodies_that_are_not_json_objects_are_refused(app: App) -> None:
    for body, detail in ((b"garbage", "The body is not valid JSON"), (b"[1]", "must hold")):
        status, answer = await http(app, "POST", "/AP/Ping", body=body)
        assert status == 400 and answer["errorcode"] == 100 and detail in answer["detail"]
    status, answer = await http(app, "POST", "/AP/Ping", body=b"x" * 70000)
    assert status == 413 and answer["errorcode"] == 100


CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("ResetPassword", {}, {"errorcode": 100, "detail": "Invalid value provided for Username"}),
    ("UnlockUser", {"UserId": 1}, {"errorcode": 20}),
    ("GetUserInfo", {}, {"errorcode": 20, "detail": "Not logged in"}),
    ("ResetPassword", {"username": "somebody"}, {"errorcode": 0, "result": True}),
]


@pytest.mark.parametrize(("function", "payload", "expected"), CASES)
async def test_the_same_call_answers_alike_over_websocket_get_and_post(
    app: App, function: str, payload: dict[str, Any], expected: dict[str, Any]
) -> None:
    async with await Client.connect(app.url) as c:
        over_ws = (await c.call(function, payload)).o
    _, over_get = await http(app, "GET", f"/AP/{function}", query=payload)
    _, over_post = await http(app, "POST", f"/AP/{function}", body=orjson.dumps(payload))
    assert over_ws == over_get == over_post
    assert expected.items() <= over_ws.items()


async def test_a_function_carrying_a_secret_answers_alike_over_websocket_and_post(
    app: App,
) -> None:
    payload = {"UserId": 1, "Password": "Fresh-Start42", "PendingCode": "nope"}
    async with await Client.connect(app.url) as c:
        over_ws = (await c.call("ResetPassword2", payload)).o
    _, over_post = await http(app, "POST", "/AP/ResetPassword2", body=orjson.dumps(payload))
    assert over_ws == over_post
    assert (over_ws["errorcode"], over_ws["detail"]) == (104, "Invalid password recovery key")


async def test_a_login_burst_over_http_checks_at_most_the_limit(app: App) -> None:
    await make_user(app.deps, "victim")
    before = app.deps.hasher.checks
    answers = await asyncio.gather(
        *(
            http(app, "GET", "/AP/Authenticate", headers=basic("victim", f"guess{n}"))
            for n in range(40)
        )
    )
    assert app.deps.hasher.checks - before <= app.settings.login_failures_per_user
    assert all(a["Authenticated"] is False for _, a in answers)


async def test_no_password_from_a_body_reaches_the_log(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    await make_user(app.deps, "alice")
    caplog.set_level(logging.DEBUG)
    secret = "Very-Secret-77"
    body = orjson.dumps({"UserName": "alice", "Password": secret})
    await http(app, "POST", "/AP/AuthenticateUser", body=body)
    assert secret not in caplog.text


# -- found by a review ------------------------------------------------------------------------


async def test_odd_requests_get_clear_answers_never_a_500(app: App) -> None:
    await make_user(app.deps, "alice")
    status, _ = await http(app, "HEAD", "/AP/LogOut")
    assert status == 405  # HEAD never runs a function
    _, odd = await http(app, "GET", "/AP/Authenticate", headers={"Authorization": "Basic é"})
    assert odd["Authenticated"] is False
    _, blank = await http(app, "GET", "/AP/Authenticate", headers=basic(" ", "x"))
    assert blank["Authenticated"] is False
    _, listed = await http(app, "POST", "/AP/Authenticate2FA", body=b'{"Code": [1]}')
    assert listed["Authenticated"] is False


async def test_bytes_past_a_declared_body_are_the_next_request_and_garbage_ends_the_connection(
    app: App,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    post = b"POST /AP/Ping HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    writer.write(post + b"x" * 5000 + b"\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)  # the server closes
    writer.close()
    first, second = raw.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200") and b'"PONG"' in first
    assert second.startswith(b"400") and b"connection: close" in second.lower()


async def test_an_upgrade_that_declares_a_body_is_refused(app: App) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(
        b"GET /WSGateway/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Content-Length: 1\r\n\r\nx"
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert not raw.startswith(b"HTTP/1.1 101")


# -- found by the security review (issue 22) ---------------------------------------------------

ONCE_ONLY = [
    "APToken",
    "Nonce",
    "APIKey",
    "Signature",
    "UserId",
    "Authorization",
    "Pending2FaToken",
    "Content-Length",
]


@pytest.mark.parametrize("header", ONCE_ONLY)
async def test_a_header_sent_twice_is_400_with_a_100_naming_it_never_a_500(
    app: App, header: str, caplog: pytest.LogCaptureFixture
) -> None:
    await make_user(app.deps, "alice")
    _, login = await http(app, "GET", "/AP/Authenticate", headers=basic("alice", PASSWORD))
    values = {
        "APToken": login["SessionToken"],
        "Authorization": basic("alice", PASSWORD)["Authorization"],
        "Content-Length": "2",
    }
    value = values.get(header, "1")
    path = "/AP/Authenticate" if header == "Authorization" else "/AP/GetUserInfo"
    caplog.set_level(logging.INFO)
    checks = app.deps.hasher.checks
    if header == "Content-Length":
        # Two that differ: which one frames the body would be left to chance. (Two equal
        # ones are one, as RFC 9110 section 8.6 allows: nothing is ambiguous.)
        status, answer = await raw_post(app, "Content-Length: 2\r\nContent-Length: 3\r\n", b"{}")
    else:
        twice = [(header, value), (header, value)]
        status, answer = await http(app, "POST", path, body=b"{}", headers=twice)
    assert status == 400, answer
    assert (answer["result"], answer["errorcode"]) == (False, 100)
    assert header in answer["detail"]
    assert app.deps.hasher.checks == checks  # no login was tried
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def raw_post(app: App, head: str, body: bytes) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    head += "Connection: close\r\n"
    writer.write(f"POST /AP/Ping HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), orjson.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize(
    ("function", "query"),
    [
        ("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD}),
        ("ResetPassword2", {"UserId": 1, "Password": "Fresh-Start42", "PendingCode": "x"}),
        ("SetSecurityQuestions", {"Password": PASSWORD}),
        ("authenticateuser", {"username": "alice", "password": PASSWORD}),
    ],
)
async def test_functions_carrying_a_password_answer_or_code_are_refused_over_get(
    app: App, function: str, query: dict[str, Any]
) -> None:
    await make_user(app.deps, "alice")
    checks = app.deps.hasher.checks
    status, answer = await http(app, "GET", f"/AP/{function}", query=query)
    assert status == 405, answer
    assert (answer["result"], answer["errorcode"]) == (False, 106)
    assert "POST" in answer["detail"]
    assert app.deps.hasher.checks == checks  # nothing was checked, nobody logged in
    # POST still works, and so do the GETs published clients send.
    body = orjson.dumps({"UserName": "alice", "Password": PASSWORD})
    _, done = await http(app, "POST", "/AP/AuthenticateUser", body=body)
    assert done["Authenticated"] is True
    _, basic_login = await http(app, "GET", "/AP/Authenticate", headers=basic("alice", PASSWORD))
    assert basic_login["Authenticated"] is True


async def test_under_tls_every_http_answer_carries_hsts(tmp_path: Path, db: str) -> None:
    ca, cert, key = private_ca(tmp_path)
    settings = settings_for(tmp_path, db=db, tls_cert=str(cert), tls_key=str(key))
    trust = ssl.create_default_context(cafile=str(ca))

    def fetch(method: str, path: str, headers: dict[str, str]) -> tuple[int, str | None]:
        conn = HTTPSConnection("127.0.0.1", app.port, context=trust, timeout=10)
        try:
            conn.request(method, path, headers=headers)
            r = conn.getresponse()
            r.read()
            return r.status, r.headers["Strict-Transport-Security"]
        finally:
            conn.close()

    async with App(settings, login_delay=0) as app:
        for method, path, headers in [
            ("GET", "/AP/Ping", {}),
            ("GET", "/AP/NoSuchThing", {}),
            ("GET", "/AP/ResetPassword2?Password=x", {}),
            ("GET", "/AP/Ping", {"APToken": "a", "apToken": "b"}),
            ("PUT", "/AP/Ping", {}),
            ("GET", "/reset", {}),
            ("GET", "/healthz", {}),
            ("GET", "/nowhere", {}),
            ("GET", "/WSGateway/", {}),
        ]:
            status, hsts = await asyncio.to_thread(fetch, method, path, headers)
            assert hsts == "max-age=31536000", (method, path, status)


async def test_without_tls_no_hsts_is_sent(app: App) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET /AP/Ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200") and b"strict-transport" not in raw.lower()


PATHS = ["/reset", "/reset.js", "/reset-texts.js", "/reset-common.js", "/healthz", "/AP/Ping"]
REPEATABLE = ["Accept-Encoding", "Upgrade", "Host", "Connection", "Cookie", "Origin"]


@pytest.mark.parametrize("header", REPEATABLE)
async def test_any_header_twice_on_any_page_is_never_a_500(
    app: App, header: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for path in [*PATHS, "/WSGateway/"]:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        twice = f"{header}: gzip\r\n{header}: websocket\r\n"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{twice}\r\n".encode())
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert not status_line.startswith(b"HTTP/1.1 5"), (path, status_line)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_chunked_body_is_read_within_the_size_limit(app: App) -> None:
    status, answer = await raw_post(app, "Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n")
    assert (status, answer) == (200, {"msg": "PONG"})
    chunk = b"%x\r\n%s\r\n" % (40000, b" " * 40000)
    status, answer = await raw_post(app, "Transfer-Encoding: chunked\r\n", chunk * 2)
    assert status == 413 and answer["errorcode"] == 100, answer


async def test_content_length_beside_transfer_encoding_is_400_never_read(app: App) -> None:
    head = "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n"  # the smuggler's pair
    status, answer = await raw_post(app, head, b"2\r\n{}\r\n0\r\n\r\n")
    assert status == 400 and answer["errorcode"] == 100, answer
    assert "Content-Length" in answer["detail"]


async def test_a_body_nested_past_the_decoders_depth_is_400_with_a_100_never_a_500(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    status, body = await http(app, "POST", "/AP/Ping", body=b"[" * 30000 + b"]" * 30000)
    assert (status, body["errorcode"], body["detail"]) == (400, 100, "The body is not valid JSON")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
