"""The page behind the emailed link (``GET /reset``), with its script and style.

Self-contained: no external assets. The password rules it checks as the user types are the
server's own Policy, embedded in the page when it is rendered, so the page and the server
cannot disagree. Headers: no-store, no-referrer, and a Content-Security-Policy that allows only
this origin's script and style and a WebSocket to the gateway.
"""

from __future__ import annotations

import html
import json
from http import HTTPStatus
from importlib import resources
from urllib.parse import urlsplit

from websockets.http11 import Request, Response

from ..engine.passwords import Policy
from .http import HttpPages, response

__all__ = ["ResetPage"]


def _static(name: str) -> bytes:
    return resources.files("oms_auth.server").joinpath("static", name).read_bytes()


def ws_url(public_url: str) -> str:
    """The gateway's address as a browser at ``public_url`` reaches it."""
    parts = urlsplit(public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/WSGateway/"


class ResetPage:
    """Renders once at start-up; every request is served from memory."""

    def __init__(self, public_url: str, policy: Policy) -> None:
        gateway = ws_url(public_url)
        parts = urlsplit(gateway)
        # Inside <script type="application/json">: "<" escaped so no text can close the tag.
        policy_json = json.dumps(policy.checks).replace("<", "\\u003c")
        page = (
            _static("reset.html")
            .decode()
            .replace("{{WS_URL}}", html.escape(gateway, quote=True))
            .replace("{{POLICY_JSON}}", policy_json)
        )
        self.html = page.encode()
        self.js = _static("reset.js")
        self.css = _static("reset.css")
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
        pages.add("/reset.css", self.style)

    async def page(self, request: Request) -> Response:
        return response(HTTPStatus.OK, self.html, "text/html; charset=utf-8", self.headers)

    async def script(self, request: Request) -> Response:
        return response(HTTPStatus.OK, self.js, "text/javascript; charset=utf-8", self.headers)

    async def style(self, request: Request) -> Response:
        return response(HTTPStatus.OK, self.css, "text/css; charset=utf-8", self.headers)
