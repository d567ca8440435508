"""Crash durability: SIGKILL the server mid-stream, restart it on the same store, and check that
every request answered with success has its effect, nothing is half done, and queued mail goes
out exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from oms_auth.app import build_deps
from protocol.client import Client

from .helpers import FAST, PASSWORD, ServerProcess, make_user, parse_mail, settings_for, sql

pytestmark = pytest.mark.slow
USERS = 24
NEW = "Fresh-Start42"
ENV = {
    **FAST,
    "OMS_AUTH_MAIL_LEASE_SECONDS": "0.5",
    "OMS_AUTH_MAIL_RETRY_SECONDS": "0.1",
    "OMS_AUTH_RESET_REQUESTS_PER_USER": "1000",
    "OMS_AUTH_MAX_REQUESTS_PER_SECOND": "100000",
}


def mails(tmp: Path) -> list[dict]:
    new = tmp / "mail" / "new"
    return [parse_mail(p) for p in sorted(new.iterdir())] if new.exists() else []


async def settle(tmp: Path, db: str, expected: int, timeout: float = 20) -> None:
    """Wait until every outbox row is sent and the Maildir holds ``expected`` messages."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        ((queued,),) = await sql(db, "SELECT count(*) FROM outbox WHERE state != 'sent'")
        if queued == 0 and len(mails(tmp)) >= expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("outbox did not settle")


async def test_a_killed_server_loses_nothing_it_acknowledged(tmp_path: Path, db: str) -> None:
    deps = await build_deps(settings_for(tmp_path, db=db))
    await make_user(deps, "op", permissions=["Operator"])
    for n in range(USERS):
        await make_user(deps, f"u{n}")
    await deps.store.close()
    deps.hasher.close()

    server = ServerProcess(
        tmp_path,
        "--db",
        db,
        "--mail",
        f"maildir:{tmp_path / 'mail'}",
        env=ENV,
    )
    await server.start()
    half = USERS // 2
    async with await Client.connect(server.url) as op:
        await op.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
        for n in range(half):  # codes to redeem during the stream
            assert (await op.call("ResetPassword", {"UserName": f"u{n}"})).ok
    await settle(tmp_path, db, half)
    codes = {m["user_id"]: m["code"] for m in mails(tmp_path)}
    ids = sorted(codes)

    answered_resets: Counter[str] = Counter()
    answered_sets: set[int] = set()

    async def request_stream(client: Client) -> None:
        k = 0
        while True:
            name = f"u{half + k % (USERS - half)}"
            if (await client.call("ResetPassword", {"UserName": name})).ok:
                answered_resets[name] += 1
            k += 1

    async def redeem(client: Client, user_id: int) -> None:
        payload = {"UserId": user_id, "Password": NEW, "PendingCode": codes[user_id]}
        if (await client.call("ResetPassword2", payload)).ok:
            answered_sets.add(user_id)

    clients = [await Client.connect(server.url) for _ in range(4)]
    for c in clients[:2]:
        await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
    work = [asyncio.create_task(request_stream(c)) for c in clients[:2]]
    for n, user_id in enumerate(ids):
        work.append(asyncio.create_task(redeem(clients[2 + n % 2], user_id)))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    await server.kill()
    await asyncio.gather(*work, return_exceptions=True)
    for c in clients:
        await c.close()
    assert sum(answered_resets.values()) > 0 and answered_sets, "the kill came too early"

    await server.start()  # same store, same Maildir
    codes_by_user = Counter(
        dict(await sql(db, "SELECT user_id, count(*) FROM reset_codes GROUP BY user_id"))
    )
    ((total,),) = await sql(db, "SELECT count(*) FROM outbox")
    await settle(tmp_path, db, total)
    delivered = mails(tmp_path)
    assert len(delivered) == total  # every queued message, once
    queued = Counter(
        dict(
            await sql(
                db, "SELECT user_id, count(*) FROM outbox WHERE kind = 'reset' GROUP BY user_id"
            )
        )
    )
    names = dict(await sql(db, "SELECT username, id FROM users"))
    # A code and its mail are one commit: never one without the other.
    assert queued == codes_by_user
    reset_mail = Counter(m["user_id"] for m in delivered if "code" in m)
    assert reset_mail == codes_by_user
    for name, count in answered_resets.items():
        assert codes_by_user[names[name]] >= count
    async with await Client.connect(server.url) as c:
        for name, user_id in names.items():
            if user_id not in codes:
                continue
            new = await c.call("AuthenticateUser", {"UserName": name, "Password": NEW})
            if user_id in answered_sets:
                assert new.o["Authenticated"] is True, name
            elif not new.o["Authenticated"]:  # not done at all: the old password still works
                old = await c.call("AuthenticateUser", {"UserName": name, "Password": PASSWORD})
                assert old.o["Authenticated"] is True, name
    await server.stop()
