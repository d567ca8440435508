"""The published npm client alphapoint-apex-api (APEX's own JavaScript API wrapper), unmodified,
through a WebSocket session against a real server: login, the calls it makes right after,
WebAuthenticateUser with a password and with a token, and the LogoutEvent it is sent.

It is installed from the npm registry into a cache folder on first use (Node.js and npm come
with the machine; .ci/run installs nothing else for it). Where there is no Node.js the test is
skipped, saying so.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from oms_auth.app import App

from .helpers import PASSWORD, make_user, npm_client

PACKAGE = "alphapoint-apex-api@3.2.19"
SCRIPT = Path(__file__).parent / "clients" / "apex_session.js"
CACHE = Path(__file__).parent / ".npm-clients"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="needs Node.js and npm"
)


@pytest.fixture(scope="module")
def module_dir() -> Path:
    return npm_client(CACHE, PACKAGE, "alphapoint-apex-api")


async def run_client(module_dir: Path, url: str, username: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(SCRIPT),
        str(module_dir),
        url,
        username,
        PASSWORD,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    steps: dict[str, Any] = {}
    for line in out.decode().splitlines():
        doc = json.loads(line)
        value = doc.get("value", doc.get("frame"))
        # The client hands on each frame's o as the string it arrived as.
        steps.setdefault(doc["step"], json.loads(value) if isinstance(value, str) else value)
    return steps


async def test_the_apex_javascript_client_runs_a_whole_session(app: App, module_dir: Path) -> None:
    uid = await make_user(app.deps, "trader", permissions=["Trading"], accounts=[10])
    steps = await run_client(module_dir, app.url, "trader")
    assert steps["ping"] == {"msg": "PONG"}
    login = steps["login"]
    assert login["reply"]["Authenticated"] is True and login["reply"]["UserId"] == uid
    assert login["isAuthenticated"] is True and login["accountId"] == 10
    assert steps["userInfo"]["UserId"] == uid
    assert steps["permissions"] == ["Trading"]
    assert steps["accounts"] == [10]
    assert steps["webLogin"]["Authenticated"] is True
    assert steps["resume"]["Authenticated"] is True
    assert steps["logout"]["result"] is True
    # The first connection shared the session that the third logged out: it was told.
    assert steps["event"]["n"] == "LogoutEvent"
