"""Published clients of the OMS protocol, unmodified, against a real server: compatibility is
what they decide, not our own tests (issue 14).

ccxt's ``ndax`` exchange (PyPI ``ccxt``) speaks the HTTP gateway: ``/AP/Ping``, Basic-auth
``/AP/Authenticate``, ``/AP/Authenticate2FA`` with the ``Pending2FaToken`` header, then calls
with ``APToken`` or with per-request API-key signature headers. It is pointed at the server the
way its users point it at a test host (``exchange.urls['api']``); nothing of it is patched.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ccxt  # type: ignore[import-untyped]
import pytest

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, make_user

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"


def ndax(app: App, **credentials: Any) -> Any:
    exchange = ccxt.ndax({"timeout": 10000, **credentials})
    base = f"http://127.0.0.1:{app.port}/AP"
    exchange.urls["api"] = {"public": base, "private": base}
    return exchange


async def test_ccxt_pings_and_signs_in_with_a_password(app: App) -> None:
    uid = await make_user(app.deps, "trader", permissions=["Trading"], accounts=[10])
    exchange = ndax(app, uid=str(uid), login="trader", password=PASSWORD, apiKey="x", secret="x")
    status = await asyncio.to_thread(exchange.fetch_status)
    assert status["status"] == "ok"
    signed_in = await asyncio.to_thread(exchange.sign_in)
    assert signed_in["Authenticated"] is True and signed_in["UserId"] == uid
    accounts = await asyncio.to_thread(exchange.fetch_accounts)  # with the APToken it got
    assert [a["id"] for a in accounts] == ["10"]


async def test_ccxt_finishes_a_totp_login_with_the_pending_token(app: App) -> None:
    uid = await make_user(app.deps, "bob", totp_secret=SECRET)
    exchange = ndax(
        app, uid=str(uid), login="bob", password=PASSWORD, twofa=SECRET, apiKey="x", secret="x"
    )
    signed_in = await asyncio.to_thread(exchange.sign_in)
    assert signed_in["Authenticated"] is True and signed_in["SessionToken"]
    assert signed_in["User"]["Use2FA"] is True


async def test_ccxt_calls_with_per_request_api_key_signatures(app: App) -> None:
    uid = await make_user(app.deps, "bot", permissions=["Trading"], accounts=[10, 11])
    async with await Client.connect(app.url) as c:
        await c.call("AuthenticateUser", {"UserName": "bot", "Password": PASSWORD})
        key = (await c.call("AddUserAPIKey", {"UserId": uid, "Permissions": ["Trading"]})).o
    # ccxt insists on a login and password being set; with an API key it signs each request.
    exchange = ndax(
        app, apiKey=key["APIKey"], secret=key["APISecret"], uid=str(uid), login="bot", password="-"
    )
    accounts = await asyncio.to_thread(exchange.fetch_accounts)
    assert [a["id"] for a in accounts] == ["10", "11"]
    forged = ndax(
        app, apiKey=key["APIKey"], secret="0" * 64, uid=str(uid), login="bot", password="-"
    )
    with pytest.raises(ccxt.BaseError, match="Invalid API key login"):
        await asyncio.to_thread(forged.fetch_accounts)
