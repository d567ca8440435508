"""docs/protocol.md, "AuthenticateUser": an API key's nonce is any text of 1 to 64 printable
ASCII characters, accepted once for the key's life (the official SDKs draw a random one for every
login). Over real sockets, on both stores, over HTTP as over the WebSocket (across two nodes:
:mod:`tests.test_nodes`)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import secrets
from typing import Any

from oms_auth.app import App
from protocol.client import Client

from .helpers import make_user, sql, store_contents
from .test_apikeys import INVALID, add_key, key_login, password_client
from .test_http_gateway import http

ROUNDS, WORKERS = 25, 8  # 200 logins, 8 at a time (below the limit of attempts in flight)


def random_nonce() -> str:
    """As the SDKs and bots draw them: random, not increasing; any printable ASCII."""
    return secrets.choice([str(secrets.randbelow(10**9)), secrets.token_urlsafe(24), "r~ " * 3])[
        :64
    ] + str(secrets.randbelow(10**6))


async def key_of(app: App) -> dict[str, Any]:
    await make_user(app.deps, "bot", permissions=["Trading"], accounts=[10])
    async with await password_client(app, "bot") as c:
        return await add_key(c, {"Permissions": ["Trading"]})


async def key_sessions(db: str, key: str) -> int:
    """Logins the store accepted with ``key`` (each audited with the key's name)."""
    rows = await sql(db, "SELECT count(*) FROM audit WHERE action = 'login' AND detail = ?", key)
    return int(rows[0][0])


async def test_two_hundred_logins_with_random_nonces_open_two_hundred_sessions(
    app: App, db: str
) -> None:
    key = await key_of(app)
    nonces = {random_nonce() for _ in range(ROUNDS * WORKERS)}
    while len(nonces) < ROUNDS * WORKERS:
        nonces.add(random_nonce())
    queue = iter(sorted(nonces, key=lambda _: secrets.randbelow(1000)))
    answers: list[bool] = []

    async def worker() -> None:
        async with await Client.connect(app.url) as c:
            for nonce in itertools.islice(queue, ROUNDS):
                answers.append(
                    (await c.call("AuthenticateUser", key_login(key, nonce))).o["Authenticated"]
                )

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    assert answers.count(True) == ROUNDS * WORKERS
    assert await key_sessions(db, f"API key {key['APIKey']}") == ROUNDS * WORKERS
    # Each of them once only, whenever it comes back.
    async with await Client.connect(app.url) as c:
        assert (await c.call("AuthenticateUser", key_login(key, min(nonces)))).o == INVALID


async def test_thirty_simultaneous_signed_http_requests_with_one_nonce_are_served_once(
    app: App, db: str
) -> None:
    key = await key_of(app)
    headers = {k: str(v) for k, v in key_login(key, "9f3a-one nonce").items()}
    answers = await asyncio.gather(
        *(http(app, "GET", "/AP/GetUserAccounts", headers=headers) for _ in range(30))
    )
    assert sorted(status for status, _ in answers) == [200] + [401] * 29
    assert {str(body) for status, body in answers if status == 200} == {"[10]"}
    assert await key_sessions(db, f"API key {key['APIKey']}") == 1


async def test_two_hundred_signed_http_requests_with_random_nonces_are_all_served(
    app: App,
) -> None:
    key = await key_of(app)
    statuses: list[int] = []

    async def worker() -> None:
        for _ in range(ROUNDS):
            headers = {k: str(v) for k, v in key_login(key, random_nonce()).items()}
            statuses.append((await http(app, "GET", "/AP/GetUserAccounts", headers=headers))[0])

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    assert statuses == [200] * ROUNDS * WORKERS


async def test_nonces_are_kept_as_digests_and_go_with_their_key(app: App, db: str) -> None:
    key = await key_of(app)
    nonce = "visible-nonce-" + secrets.token_hex(8)
    async with await Client.connect(app.url) as c:
        assert (await c.call("AuthenticateUser", key_login(key, nonce))).o["Authenticated"]
    rows = await sql(db, "SELECT digest FROM api_key_nonces WHERE key = ?", key["APIKey"])
    assert [bytes(r[0]) for r in rows] == [hashlib.sha256(nonce.encode()).digest()]
    assert nonce.encode() not in await store_contents(db)
    async with await password_client(app, "bot") as c:
        removed = await c.call("RemoveUserAPIKey", {"APIKey": key["APIKey"]})
        assert removed.o["result"] is True
    assert await sql(db, "SELECT count(*) FROM api_key_nonces") == [(0,)]
