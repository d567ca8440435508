"""docs/operations.md, "Rotating the service key", on two nodes: two ``oms-auth serve`` processes on
one PostgreSQL schema and one key file rotate without a restart and without one failed request
while logins, TOTP logins and API-key logins run on both."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyotp
import pytest

from oms_auth.keyring import read_ring, sealed_prefix
from protocol.client import Client

from .helpers import PASSWORD, oms_auth, sql
from .test_apikeys import add_key, key_login
from .test_nodes import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db", ["postgres"], indirect=True)]

TOTP_USERS = 6


def secret_of(n: int) -> str:
    return f"JBSWY3DPEHPK3PXPJBSWY3D{'ABCDEFGHIJ'[n]}"


class Load:
    """Logins of three kinds on both nodes until stopped; every answer counted."""

    def __init__(self, cluster: Cluster, secrets: dict[str, str], keys: dict[str, Any]) -> None:
        self.cluster = cluster
        self.secrets = secrets
        self.keys = keys
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = asyncio.Event()

    def outcome(self, kind: str, ok: bool, detail: object) -> None:
        self.counts[f"{kind}:{'ok' if ok else 'failed'}"] += 1
        if not ok:
            self.failures.append(f"{kind}: {detail}")

    async def passwords(self, node: str) -> None:
        async with await Client.connect(self.cluster.nodes[node].url) as c:
            while not self.stop.is_set():
                login = {"UserName": "plain", "Password": PASSWORD}
                reply = await c.call("AuthenticateUser", login)
                self.outcome("password", bool(reply.o.get("Authenticated")), reply.o)
                await asyncio.sleep(0.05)

    async def api_keys(self, node: str) -> None:
        key = self.keys[node]
        nonce = int(time.time() * 1000)
        async with await Client.connect(self.cluster.nodes[node].url) as c:
            while not self.stop.is_set():
                nonce += 1
                reply = await c.call("AuthenticateUser", key_login(key, nonce))
                self.outcome("api key", bool(reply.o.get("Authenticated")), reply.o)
                await asyncio.sleep(0.05)

    async def totp(self, node: str, username: str) -> None:
        """Logins with a code for a newer step each time (a step is accepted once), spread
        over the rotation; up to three per user (steps now-1, now, now+1)."""
        totp, last = pyotp.TOTP(self.secrets[username]), None
        while not self.stop.is_set():
            now = int(time.time()) // 30
            step = now - 1 if last is None else last + 1
            if step > now + 1:
                return
            async with await Client.connect(self.cluster.nodes[node].url) as c:
                first = await c.call(
                    "AuthenticateUser", {"UserName": username, "Password": PASSWORD}
                )
                if not first.o.get("Requires2FA"):
                    self.outcome("totp", False, first.o)
                else:
                    done = await c.call("Authenticate2FA", {"Code": totp.generate_otp(step)})
                    self.outcome("totp", bool(done.o.get("Authenticated")), done.o)
            last = step
            await asyncio.sleep(1.5)


async def test_two_nodes_rotate_under_load_of_three_kinds_of_login_without_one_failure(
    cluster: Cluster, tmp_path: Path, db: str
) -> None:
    secrets = {f"tot{n}": secret_of(n) for n in range(TOTP_USERS)}
    extra = {name: {"totp_secret": s} for name, s in secrets.items()}
    extra["bot"] = {"permissions": ["Trading"], "accounts": [10]}
    ids = await cluster.users("plain", "bot", *secrets, **extra)
    await cluster.start()
    keys = {}
    for node in ("a", "b"):
        bot = await cluster.client(node, "bot")
        keys[node] = await add_key(bot, {"UserId": ids["bot"], "Permissions": ["Trading"]})
    old = read_ring(cluster.key)
    assert old is not None
    load = Load(cluster, secrets, keys)
    users = list(secrets)
    tasks = [
        *(asyncio.create_task(load.passwords(n)) for n in ("a", "b")),
        *(asyncio.create_task(load.api_keys(n)) for n in ("a", "b")),
        *(asyncio.create_task(load.totp("ab"[i % 2], u)) for i, u in enumerate(users)),
    ]
    await asyncio.sleep(1.0)
    env = {"OMS_AUTH_DB": db, "OMS_AUTH_SECRET_KEY_FILE": str(cluster.key)}
    rotated = await asyncio.to_thread(oms_auth, tmp_path, "key", "rotate", env=env)
    assert "is current; re-sealed" in rotated.stdout
    await asyncio.sleep(4.0)  # both nodes take the ring up (within 2 s) while the load runs
    load.stop.set()
    await asyncio.gather(*tasks)
    assert load.failures == [], (load.failures[:5], load.counts)
    assert load.counts["totp:ok"] >= 2 * TOTP_USERS, load.counts
    assert min(load.counts["password:ok"], load.counts["api key:ok"]) >= 20, load.counts
    new = read_ring(cluster.key)
    assert new is not None and new.current.id != old.current.id
    prefix = sealed_prefix(new.current.id)
    sealed = await sql(db, "SELECT totp_sealed FROM users WHERE totp_sealed IS NOT NULL")
    sealed += await sql(db, "SELECT secret_sealed FROM api_keys")
    assert len(sealed) == TOTP_USERS + 2
    assert all(bytes(v).startswith(prefix) for (v,) in sealed)
    rows = await sql(db, "SELECT value FROM meta WHERE key = 'current_key_id'")
    assert rows == [(new.current.id,)]
    verified = await asyncio.to_thread(oms_auth, tmp_path, "audit", "verify", env=env)
    assert "audit trail intact" in verified.stdout
    retired = await asyncio.to_thread(oms_auth, tmp_path, "key", "retire", old.current.id, env=env)
    assert "retired key" in retired.stdout
    # Both nodes still serve every kind of login after the old key is gone.
    for node in ("a", "b"):
        c = await cluster.client(node)
        reply = await c.call(
            "AuthenticateUser", key_login(keys[node], int(time.time() * 1000) + 10**6)
        )
        assert reply.o["Authenticated"], reply.o
