"""The official SDKs of an exchange that runs this OMS API, unmodified, against a real server:
Python (PyPI ``notbank``) and Node.js (npm ``notbank``), over the WebSocket and over HTTP. Their
own API-key login (a random nonce each time), GetUserInfo parsed strictly into their record,
GetUserPermissions, GetUserAccounts, WebAuthenticateUser with a password and with a token,
LogOut (docs/protocol.md, "Published clients").

Both insist on TLS: the server runs with a certificate from a test CA, which they are given the
way they take one (REQUESTS_CA_BUNDLE and WEBSOCKET_CLIENT_CA_BUNDLE, NODE_EXTRA_CA_CERTS). Each
is installed from its registry into a cache folder on first use: the Python SDK into a venv of
its own (its certifi pin conflicts with ccxt's in ours), the Node.js one with npm. The drivers
(tests/clients/notbank_session.*) list each SDK call as one step: adding a call is one line
there and one assertion here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, make_user, npm_client, settings_for
from .test_apikeys import add_key
from .test_deployment import private_ca

PYTHON_SDK = "notbank==2.5.0"
NODE_SDK = "notbank@2.2.0-alpha"
CACHE = Path(__file__).parent / ".sdk-clients"
CLIENTS = Path(__file__).parent / "clients"
MODES = ["ws", "http"]

# GetUserInfo's APEX record as the Python SDK parses it (its UserInfo, snake_case).
PYTHON_RECORD = {
    "user_id",
    "user_name",
    "email",
    "password_hash",
    "pending_email_code",
    "email_verified",
    "account_id",
    "date_time_created",
    "affiliate_id",
    "referer_id",
    "oms_id",
    "use_2fa",
    "salt",
    "pending_code_time",
    "locked",
    "locked_time",
    "number_of_failed_attempt",
    "margin_borrower_enabled",
    "margin_acquisition_halt",
    "operator_id",
}


# The APEX device record (GetUserDevices), as the Node SDK's UserDevice declares it.
DEVICE_KEYS = {
    "HashCode",
    "Location",
    "DeviceName",
    "IpAddress",
    "UserId",
    "IsTrusted",
    "ExpirationTime",
}


@pytest.fixture(scope="module")
def python_sdk() -> Path:
    """A venv of its own holding the SDK (made once, kept in CACHE)."""
    venv = CACHE / ("python-" + PYTHON_SDK.replace("==", "-"))
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        install = [str(python), "-m", "pip", "install", "-q", PYTHON_SDK]
        subprocess.run(install, check=True, capture_output=True, timeout=600)
        (venv / "ready").touch()
    return python


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("needs Node.js and npm")
    return npm_client(CACHE / ("node-" + NODE_SDK.replace("@", "-")), NODE_SDK, "notbank")


class Served:
    """A server under TLS from a test CA, a bot with an API key, a user sharing its account."""

    def __init__(self, app: App, ca: Path, key: dict[str, Any]) -> None:
        self.app, self.ca, self.key = app, ca, key
        self.host = f"127.0.0.1:{app.port}"
        self.env = {
            **os.environ,
            "REQUESTS_CA_BUNDLE": str(ca),
            "WEBSOCKET_CLIENT_CA_BUNDLE": str(ca),
            "NODE_EXTRA_CA_CERTS": str(ca),
        }


@pytest.fixture
async def served(tmp_path: Path, db: str) -> AsyncIterator[Served]:
    ca, cert, tls_key = private_ca(tmp_path)
    settings = settings_for(tmp_path, db=db, tls_cert=str(cert), tls_key=str(tls_key))
    async with App(settings, login_delay=0) as app:
        await make_user(app.deps, "bot", permissions=["Trading"], accounts=[10])
        await make_user(app.deps, "mate", permissions=["Trading"], accounts=[10, 11])
        trust = ssl.create_default_context(cafile=str(ca))
        async with await Client.connect(app.url, ssl=trust) as c:
            login = await c.call("AuthenticateUser", {"UserName": "bot", "Password": PASSWORD})
            assert login.o["Authenticated"], login.o
            key = await add_key(c, {"Permissions": ["Trading"]})
        yield Served(app, ca, key)


async def steps_of(command: list[str], env: dict[str, str]) -> dict[str, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    steps: dict[str, dict[str, Any]] = {}
    for line in out.decode().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            steps[doc.pop("step")] = doc
    return steps


def value(steps: dict[str, dict[str, Any]], step: str) -> Any:
    assert "value" in steps[step], (step, steps[step])
    return steps[step]["value"]


@pytest.mark.parametrize("mode", MODES)
async def test_the_official_python_sdk_runs_a_whole_session(
    served: Served, python_sdk: Path, mode: str
) -> None:
    key, uid = served.key, served.key["UserId"]
    command = [str(python_sdk), str(CLIENTS / "notbank_session.py"), mode, served.host]
    command += [key["APIKey"], key["APISecret"], str(uid), "mate"]
    steps = await steps_of(command, served.env)
    assert value(steps, "login")["authenticated"] is True
    info = value(steps, "userInfo")
    assert set(info) == PYTHON_RECORD and info["user_id"] == uid and info["user_name"] == "bot"
    assert (info["password_hash"], info["salt"]) == ("", "")
    assert value(steps, "userInfoById") == info
    assert value(steps, "mateInfo")["user_name"] == "mate"  # the user named, not the caller
    assert value(steps, "permissions") == ["Trading"]
    assert value(steps, "accounts") == [10]
    # The device the fixture's password login came from, in the SDK's own UserDevice.
    (device,) = value(steps, "devices")
    assert device["user_id"] == uid and device["hash_code"] > 0 and device["ip_address"]
    assert value(steps, "login2")["authenticated"] is True  # another random nonce
    resumed = value(steps, "resume")
    assert resumed["authenticated"] is True and resumed["user_id"] == str(uid)
    assert "value" in steps["logout"], steps["logout"]
    assert "error" in steps["afterLogout"]  # the session is gone


@pytest.mark.parametrize("mode", MODES)
async def test_the_official_node_sdk_runs_a_whole_session(
    served: Served, node_sdk: Path, mode: str
) -> None:
    key, uid = served.key, served.key["UserId"]
    command = ["node", str(CLIENTS / "notbank_session.mjs"), str(node_sdk), mode, served.host]
    command += [key["APIKey"], key["APISecret"], str(uid), "bot", PASSWORD, "mate"]
    steps = await steps_of(command, served.env)
    assert "value" in steps["login"], steps["login"]
    info = value(steps, "userInfo")
    assert info["UserId"] == uid and info["UserName"] == "bot" and info["PasswordHash"] == ""
    assert value(steps, "userInfoById") == info
    assert value(steps, "mateInfo")["UserName"] == "mate"
    assert value(steps, "permissions") == ["Trading"]
    assert value(steps, "accounts") == [10]
    (device,) = value(steps, "devices")
    assert set(device) == DEVICE_KEYS and device["UserId"] == uid and device["HashCode"] > 0
    if mode == "ws":
        # Over HTTP this SDK sends WebAuthenticateUser with the method "NONE", which no HTTP
        # server takes (405): its HTTP client logs in with the key only.
        login = value(steps, "passwordLogin")
        assert login["Authenticated"] is True and login["UserId"] == str(uid)
        resumed = value(steps, "resume")
        assert resumed["Authenticated"] is True and resumed["UserId"] == str(uid)
    assert "value" in steps["logout"], steps["logout"]
    assert "error" in steps["afterLogout"]


async def test_the_python_sdks_keepalive_ping_with_o_null_is_answered_pong(served: Served) -> None:
    """Every 10 s its WebSocket sends Ping with ``o`` the JSON text ``null``."""
    trust = ssl.create_default_context(cafile=str(served.ca))
    async with connect(served.app.url, ssl=trust) as ws:
        await ws.send('{"m":0,"i":2,"n":"Ping","o":"null"}')
        assert json.loads(await ws.recv()) == {"m": 1, "i": 2, "n": "Ping", "o": '{"msg":"PONG"}'}
