"""The page behind the emailed link (``GET /reset``), with its script, words, style, blocklist.

Self-contained: no external assets. The password rules it checks as the user types are the
server's own Policy, embedded in the page when it is rendered, so the page and the server
cannot disagree; the server's refusal texts are embedded too, so the page tells refusals apart
by the server's own words rather than by guessing at them. The common-password list is a
separate same-origin script (``/reset-common.js``) that the page loads once it shows the form:
it is the server's own list, so the page can warn before the server refuses. Headers:
no-store, no-referrer, and a Content-Security-Policy that allows only this origin's scripts and
style and a WebSocket to the gateway.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import json
from http import HTTPStatus
from importlib import resources
from urllib.parse import urlsplit

from websockets.http11 import Request, Response

from ..engine import passwords, texts
from ..engine.passwords import SYMBOLS, Policy, Rule
from .http import HttpPages, response

__all__ = ["ResetPage"]

# The refusals the page turns into its own words (it is translated; these are English).
_REFUSALS = {
    "rules": texts.PASSWORD_RULES_PREFIX,
    "invalidKey": texts.INVALID_RECOVERY_KEY,
    "locked": texts.ACCOUNT_LOCKED,
    "tooManyKeys": texts.TOO_MANY_INVALID_KEYS,
    "wrongAnswer": texts.INVALID_ANSWER,
    "totpRequired": texts.TOTP_REQUIRED,
    "wrongTotp": texts.INVALID_2FA_CODE,
    "selfServiceOff": texts.SELF_SERVICE_OFF,
    "badUserId": texts.INVALID_USER_ID,
}


def _static(name: str) -> bytes:
    return resources.files("oms_auth.server").joinpath("static", name).read_bytes()


def ws_url(public_url: str) -> str:
    """The gateway's address as a browser at ``public_url`` reaches it."""
    parts = urlsplit(public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/WSGateway/"


def page_check(rule: Rule) -> dict[str, object]:
    """A rule as the page checks it. The two rules the policy leaves to the server are ones
    the page can check after all: it is told the username, and it can load the blocklist."""
    kind, arg = rule.check
    if kind == "server" and rule.ok is passwords.not_username:
        kind = "username"
    elif kind == "server" and rule.ok is passwords.not_common:
        kind = "common"
    return {"words": rule.words, "kind": kind, "arg": arg}


def page_config(policy: Policy, login_url: str | None) -> str:
    """The JSON the page reads at start, safe inside ``<script type="application/json">``."""
    config = {
        "rules": [page_check(rule) for rule in policy.rules],
        "specials": SYMBOLS,
        "refusals": _REFUSALS,
        "loginUrl": login_url,
    }
    # "<" escaped so no text can close the tag.
    return json.dumps(config).replace("<", "\\u003c")


def common_script() -> bytes:
    """The blocklist as a script defining one string (newline-separated). Only words of four
    or more characters: the server ignores shorter ones too."""
    # The server's own list (passwords keeps it private to load it lazily; we do the same).
    words = "\n".join(sorted(w for w in passwords._common() if len(w) >= 4))
    return f"self.omsCommonPasswords = {json.dumps(words)};\n".encode()


class ResetPage:
    """Renders once at start-up; every request is served from memory. The blocklist script
    is built on its first request (it needs the 30,000-word list, which is slow to load)."""

    def __init__(self, public_url: str, policy: Policy, *, login_url: str | None = None) -> None:
        gateway = ws_url(public_url)
        parts = urlsplit(gateway)
        page = (
            _static("reset.html")
            .decode()
            .replace("{{WS_URL}}", html.escape(gateway, quote=True))
            .replace("{{CONFIG_JSON}}", page_config(policy, login_url))
        )
        self.html = page.encode()
        self.js = _static("reset.js")
        self.texts = _static("reset-texts.js")
        self.css = _static("reset.css")
        self._common: tuple[bytes, bytes] | None = None  # (plain, gzipped)
        self.headers = {
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": (
                "default-src 'none'; script-src 'self'; style-src 'self'; "
                f"connect-src {parts.scheme}://{parts.netloc}; img-src 'self'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
            "X-Frame-Options": "DENY",
        }

    def install(self, pages: HttpPages) -> None:
        pages.add("/reset", self.page)
        pages.add("/reset.js", self.script)
        pages.add("/reset-texts.js", self.translations)
        pages.add("/reset.css", self.style)
        pages.add("/reset-common.js", self.common)

    async def page(self, request: Request) -> Response:
        return response(HTTPStatus.OK, self.html, "text/html; charset=utf-8", self.headers)

    async def script(self, request: Request) -> Response:
        return response(HTTPStatus.OK, self.js, "text/javascript; charset=utf-8", self.headers)

    async def translations(self, request: Request) -> Response:
        return response(HTTPStatus.OK, self.texts, "text/javascript; charset=utf-8", self.headers)

    async def style(self, request: Request) -> Response:
        return response(HTTPStatus.OK, self.css, "text/css; charset=utf-8", self.headers)

    async def common(self, request: Request) -> Response:
        if self._common is None:
            # Off the event loop: loading the list and compressing it take a moment.
            plain = await asyncio.to_thread(common_script)
            self._common = (plain, await asyncio.to_thread(gzip.compress, plain))
        plain, packed = self._common
        headers = {**self.headers, "Vary": "Accept-Encoding"}
        # A quarter of the size for every browser; the plain text for anything else.
        # A list header, which may come on several lines.
        if "gzip" in ",".join(request.headers.get_all("Accept-Encoding")).lower():
            headers["Content-Encoding"] = "gzip"
            return response(HTTPStatus.OK, packed, "text/javascript; charset=utf-8", headers)
        return response(HTTPStatus.OK, plain, "text/javascript; charset=utf-8", headers)
