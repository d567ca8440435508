"""docs/protocol.md, "The other HTTP paths": the plain-HTTP side: the reset page's headers,
/healthz, /metrics, methods."""

from __future__ import annotations

import asyncio
import http.client
import re

import pytest

from oms_auth.app import App
from oms_auth.engine.passwords import POLICIES
from protocol.client import Client

from .helpers import PASSWORD, make_user


def fetch(app: App, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


async def get(app: App, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(fetch, app, path, method)


async def test_the_reset_page_is_self_contained_with_strict_headers(app: App) -> None:
    status, headers, body = await get(app, "/reset?UserId=1&PendingCode=x")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert f"connect-src ws://127.0.0.1:{app.port}" in csp
    assert "unsafe-inline" not in csp
    page = body.decode()
    assert page.count('autocomplete="new-password"') == 2
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no external assets
    assert re.search(r"<script(?![^>]*(src=|application/json))", page) is None  # no inline JS
    for asset in ("/reset.js", "/reset.css"):
        status, headers, _ = await get(app, asset)
        assert status == 200 and headers["content-security-policy"] == csp


async def test_the_page_embeds_the_servers_own_rules(app: App) -> None:
    _, _, body = await get(app, "/reset")
    for words in POLICIES["default"].words:
        assert words.replace("\\", "\\\\") in body.decode()


@pytest.mark.parametrize(
    ("password", "username"),
    [
        ("short", "u"),
        ("Abcdefgh1!", "u"),
        ("ABCDEFGHIJKLMNOPQRSTU", "u"),
        ("ÄÖÜäöü123_x", "u"),
        ("abc", "u"),
        ("Abcdefghijklmnopq1!", "u"),
        ("Abcdefghijklmnopqr1!", "u"),
        ("١٢٣Ab_cdefg", "u"),
    ],
)
def test_the_pages_checks_agree_with_the_servers_rules(password: str, username: str) -> None:
    """The page runs each rule's (kind, arg) check; this is that interpreter in Python, held
    against the rule itself so the two cannot drift."""
    interpret = {
        "min": lambda p, n: len(p) >= n,
        "max": lambda p, n: len(p) <= n,
        "upper": lambda p, _: any(c.isupper() for c in p),
        "lower": lambda p, _: any(c.islower() for c in p),
        "digit": lambda p, _: any(c.isdigit() for c in p),
        "any_of": lambda p, chars: any(c in chars for c in p),
    }
    for policy in POLICIES.values():
        for rule in policy.rules:
            kind, arg = rule.check
            if kind != "server":
                assert interpret[kind](password, arg) == rule.ok(password, username), rule.words


async def test_head_has_no_body_and_other_methods_are_refused(app: App) -> None:
    status, headers, body = await get(app, "/reset", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, _, _ = await get(app, "/reset", "POST")
    assert status == 405
    assert (await get(app, "/nowhere"))[0] == 404
    assert (await get(app, "/WSGateway/"))[0] == 426


async def test_healthz_answers_while_the_store_does(app: App) -> None:
    assert await get(app, "/healthz") == (200, (await get(app, "/healthz"))[1], b"ok\n")


async def test_metrics_count_requests_resets_and_mail(app: App, tmp_path) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    async with await Client.connect(app.url) as c:
        await c.call("Ping")
        await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
        await c.call("ResetPassword", {"UserName": "op"})
        await c.call("ResetPassword", {"UserName": "nobody"})
        await c.raw("junk")
        _, _, body = await get(app, "/metrics")
    text = body.decode()
    assert 'oms_auth_requests_total{function="Ping",errorcode="0"} 1' in text
    assert 'oms_auth_requests_total{function="ResetPassword",errorcode="104"} 1' in text
    assert 'oms_auth_requests_total{function="",errorcode="100"} 1' in text
    assert "oms_auth_connections 1" in text
    assert "oms_auth_resets_requested 1" in text and "oms_auth_resets_refused 1" in text
    assert "oms_auth_mail_queued" in text and "oms_auth_request_seconds_bucket" in text
