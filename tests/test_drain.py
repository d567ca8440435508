"""docs/operations.md, "Overload and shutdown": on SIGTERM a real ``oms-auth serve`` stops
accepting, answers the requests in flight, closes every WebSocket with 1012 so clients reconnect
(to another node where there is one: tests/test_nodes.py) and resume with their token; nothing
acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from oms_auth.app import build_deps
from protocol.client import Client

from .helpers import (
    PASSWORD,
    ServerProcess,
    eventually,
    is_postgres,
    make_user,
    parse_mail,
    settings_for,
)

pytestmark = pytest.mark.slow
ENV = {"OMS_AUTH_RESET_REQUESTS_PER_SOURCE": "1000"}


async def add_users(tmp_path: Path, db: str, *names: str) -> None:
    deps = await build_deps(settings_for(tmp_path, db=db))
    try:
        await make_user(deps, "op", permissions=["Operator"], accounts=[1])
        for name in names:
            await make_user(deps, name)
    finally:
        await deps.store.close()
        deps.hasher.close()


def node(tmp_path: Path, db: str) -> ServerProcess:
    env = dict(ENV)
    if is_postgres(db):
        env["OMS_AUTH_SECRET_KEY_FILE"] = str(tmp_path / "oms-auth.key")
    mail = f"maildir:{tmp_path / 'mail'}"
    return ServerProcess(tmp_path, "--db", db, "--mail", mail, "--drain-seconds", "10", env=env)


async def closed_with(c: Client) -> int | None:
    """The close code the server sent this client (waiting for the close)."""
    with pytest.raises(ConnectionClosed) as closed:
        await c.next_unmatched(timeout=15)
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


async def login(c: Client, password: str = PASSWORD) -> dict[str, object]:
    reply = await c.call("AuthenticateUser", {"UserName": "alice", "Password": password})
    return dict(reply.o)


async def test_sigterm_answers_requests_in_flight_refuses_new_ones_then_closes_with_1012(
    tmp_path: Path, db: str
) -> None:
    await add_users(tmp_path, db, "alice")
    server = node(tmp_path, db)
    await server.start()
    try:
        busy, idle = await Client.connect(server.url), await Client.connect(server.url)
        for _ in range(5):  # failures pile up: the next attempt waits a second first
            assert (await login(busy, "wrong"))["Authenticated"] is False
        in_flight = asyncio.ensure_future(login(busy, "wrong"))
        await asyncio.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        # A request sent while draining was run (its effects committed) and lost its answer
        # with the close: it is refused at once instead, saying why.
        during = asyncio.ensure_future(login(busy, "wrong"))
        with pytest.raises(OSError):  # no longer accepting
            await Client.connect(server.url, open_timeout=1)
        answer = await asyncio.wait_for(in_flight, 15)
        assert answer["errormsg"] == "Invalid username or password"
        refused = await asyncio.wait_for(during, 15)
        assert refused["detail"] == "The server is restarting; reconnect and try again", refused
        assert await closed_with(busy) == 1012
        assert await closed_with(idle) == 1012
        assert await asyncio.wait_for(server.proc.wait(), 30) == 0
    finally:
        if server.proc.returncode is None:
            await server.kill()


async def send_resets(url: str, names: list[str], acknowledged: list[str]) -> None:
    """Resets for ``names`` one after another on one connection, until it closes; the names
    whose reset was acknowledged go to ``acknowledged``."""
    with contextlib.suppress(ConnectionClosed, OSError):
        async with await Client.connect(url) as c:
            op = await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
            assert op.o["Authenticated"], op.o
            for name in names:
                if (await c.call("ResetPassword", {"UserName": name})).ok:
                    acknowledged.append(name)


async def test_every_acknowledged_reset_is_mailed_after_a_sigterm_mid_stream_and_restart(
    tmp_path: Path, db: str
) -> None:
    names = [f"user{n}" for n in range(120)]
    await add_users(tmp_path, db, *names)
    server = node(tmp_path, db)
    await server.start()
    acknowledged: list[str] = []
    try:
        streams = [send_resets(server.url, names[n::4], acknowledged) for n in range(4)]
        sending = asyncio.gather(*streams)
        await eventually(lambda: len(acknowledged) >= 20)
        await server.stop()  # mid-stream
        await asyncio.wait_for(sending, 30)
        assert 20 <= len(acknowledged) < len(names)
        await server.start()  # the same store and Maildir

        def mailed() -> set[str]:
            new = tmp_path / "mail" / "new"
            return {parse_mail(p)["to"].split("@")[0] for p in new.glob("*")}

        await eventually(lambda: set(acknowledged) <= mailed(), timeout=30)
    finally:
        if server.proc.returncode is None:
            await server.stop()
