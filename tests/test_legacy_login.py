"""docs/import.md, "At the next login": a user whose hash came from another system logs in over
a real socket with its password, and that login replaces the hash with Argon2id in the
transaction that opens its session; /metrics counts the users still on each scheme."""

from __future__ import annotations

import asyncio

import bcrypt
import pyotp

from oms_auth.app import App
from oms_auth.engine import totp
from oms_auth.store import SessionOpening
from protocol.client import Client

from .helpers import PASSWORD, make_user, sql
from .test_http import get

BCRYPT = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


async def stored_hash(db: str, user_id: int) -> str:
    return str((await sql(db, "SELECT password_hash FROM users WHERE id = ?", user_id))[0][0])


async def legacy_count(app: App, scheme: str) -> int:
    _, _, body = await get(app, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(f'oms_auth_legacy_hashes{{scheme="{scheme}"}} '):
            return int(line.split()[-1])
    raise AssertionError(f"no legacy_hashes line for {scheme}")


async def with_hash(app: App, username: str, encoded: str, **kwargs: object) -> int:
    user_id = await make_user(app.deps, username, **kwargs)
    await sql(app.settings.db, "UPDATE users SET password_hash = ? WHERE id = ?", encoded, user_id)
    return user_id


async def login(client: Client, username: str, password: str = PASSWORD) -> dict:
    answer = await client.call("AuthenticateUser", {"UserName": username, "Password": password})
    return answer.o


async def test_a_bcrypt_user_logs_in_and_its_hash_becomes_argon2id(app: App) -> None:
    user_id = await with_hash(app, "alice", BCRYPT)
    await with_hash(app, "bob", BCRYPT)
    assert await legacy_count(app, "bcrypt") == 2
    async with await Client.connect(app.url) as client:
        assert (await login(client, "alice", "wrong"))["Authenticated"] is False
        assert await stored_hash(app.settings.db, user_id) == BCRYPT  # a failure changes nothing
        assert (await login(client, "alice"))["Authenticated"] is True
    after = await stored_hash(app.settings.db, user_id)
    assert after.startswith("$argon2id$") and not app.deps.hasher.needs_rehash(after)
    assert await legacy_count(app, "bcrypt") == 1
    async with await Client.connect(app.url) as client:
        assert (await login(client, "alice"))["Authenticated"] is True
        assert (await login(client, "alice", "wrong"))["Authenticated"] is False
    assert await stored_hash(app.settings.db, user_id) == after  # no second rehash


async def test_a_user_with_a_second_step_is_rehashed_once_its_password_is_proven(
    app: App,
) -> None:
    secret = "JBSWY3DPEHPK3PXPJBSWY3DP"
    user_id = await with_hash(app, "carol", BCRYPT)
    await app.deps.store.set_totp(user_id, totp.seal_secret(app.deps.sealer, user_id, secret))
    async with await Client.connect(app.url) as client:
        assert (await login(client, "carol"))["Requires2FA"] is True
        answer = await client.call("Authenticate2FA", {"Code": pyotp.TOTP(secret).now()})
        assert answer.o["Authenticated"] is True
    assert (await stored_hash(app.settings.db, user_id)).startswith("$argon2id$")


async def test_simultaneous_first_logins_all_open_sessions_and_leave_one_argon2id_hash(
    app: App,
) -> None:
    user_id = await with_hash(app, "dave", BCRYPT)
    clients = [await Client.connect(app.url) for _ in range(6)]
    try:
        replies = await asyncio.gather(*(login(c, "dave") for c in clients))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    assert all(r["Authenticated"] for r in replies)
    after = await stored_hash(app.settings.db, user_id)
    assert after.startswith("$argon2id$")
    assert await app.deps.hasher.verify(after, PASSWORD)


async def test_the_replacement_is_written_only_while_the_verified_hash_is_still_stored(
    app: App,
) -> None:
    """A password set meanwhile (a reset, another login's rehash) is never overwritten by a
    login that verified the hash before it."""
    user_id = await with_hash(app, "erin", BCRYPT)
    newer = await app.deps.hasher.hash("Another-Pass9")
    await sql(app.settings.db, "UPDATE users SET password_hash = ? WHERE id = ?", newer, user_id)
    late = await app.deps.hasher.hash(PASSWORD)
    opening = SessionOpening(
        digest=b"d" * 32,
        user_id=user_id,
        now=app.deps.clock(),
        password_version=0,
        rehash=(BCRYPT, late),
    )
    await app.deps.store.open_session(opening)
    assert await stored_hash(app.settings.db, user_id) == newer
    await app.deps.store.replace_hash(user_id, BCRYPT, late)
    assert await stored_hash(app.settings.db, user_id) == newer


async def test_a_stored_argon2_hash_over_the_login_cost_bounds_never_verifies(app: App) -> None:
    # 65 lanes (cheap to make here, but past the 64 a login may pay for): the right password
    # does not open a session with it, and the deployment's own hashes still verify.
    from argon2 import PasswordHasher

    costly = PasswordHasher(time_cost=1, memory_cost=8 * 65, parallelism=65).hash(PASSWORD)
    await with_hash(app, "lanes", costly)
    await make_user(app.deps, "plain")
    async with await Client.connect(app.url) as client:
        assert (await login(client, "lanes"))["Authenticated"] is False
        assert (await login(client, "plain"))["Authenticated"] is True
