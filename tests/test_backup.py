"""docs/operations.md, "Backing up and restoring": ``oms-auth backup DEST`` copies a SQLite store
while it serves under load (consistent, synced, mode 0600, no key inside); ``oms-auth restore
SRC`` is refused while a node serves the store and puts the copy back otherwise; on PostgreSQL a
pg_dump restored with pg_restore into a fresh database serves. Read-only commands on a missing
store exit 2 with one line instead of creating one; the commands that create one say so."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oms_auth.app import App
from oms_auth.keyring import read_ring
from oms_auth.store.urls import parse_url
from protocol.client import Client

from .helpers import FAST, PASSWORD, PG_URL, make_user, oms_auth, settings_for
from .test_files import mode, umask

pytestmark = pytest.mark.slow


@pytest.fixture
async def serving(tmp_path: Path) -> AsyncIterator[App]:
    app = App(settings_for(tmp_path), login_delay=0)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_a_backup_taken_under_load_is_consistent_private_and_holds_no_key(
    tmp_path: Path, serving: App
) -> None:
    made: list[int] = []
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        i = 0
        while not stop.is_set() or i < 5:  # a few more after the copy, at least
            made.append(await make_user(serving.deps, f"u{n}x{i}"))
            i += 1

    load = [asyncio.create_task(writer(n)) for n in range(4)]
    await asyncio.sleep(0.2)
    with umask(0):
        done = await asyncio.to_thread(oms_auth, tmp_path, "backup", "copy.sqlite3")
    stop.set()
    await asyncio.gather(*load)
    copy = tmp_path / "copy.sqlite3"
    assert "the key ring is not in it" in done.stdout
    assert mode(copy) == 0o600
    with sqlite3.connect(copy) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        (users,) = db.execute("SELECT count(*) FROM users").fetchone()
    assert 0 < users < len(made)  # one committed state, partway through the load
    ring = read_ring(tmp_path / "oms-auth.sqlite3.key")
    assert ring is not None
    data = copy.read_bytes()
    assert ring.current.key not in data and ring.current.key.hex().encode() not in data
    env = {"OMS_AUTH_SECRET_KEY_FILE": str(tmp_path / "oms-auth.sqlite3.key")}
    verified = oms_auth(tmp_path, "--db", str(copy), "audit", "verify", env=env)
    assert f"audit trail intact: {users} rows" in verified.stdout
    again = oms_auth(tmp_path, "backup", "copy.sqlite3", check=False)
    assert again.returncode == 2 and "exists already" in again.stderr  # never overwritten


async def test_restore_is_refused_while_a_node_serves_the_store_and_works_once_it_stopped(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    app = App(settings, login_delay=0)
    await app.start()
    try:
        await make_user(app.deps, "kept")
        oms_auth(tmp_path, "backup", "copy.sqlite3")
        await make_user(app.deps, "after")
        refused = await asyncio.to_thread(
            oms_auth, tmp_path, "restore", "copy.sqlite3", check=False
        )
        assert refused.returncode == 2
        (line,) = refused.stderr.strip().splitlines()
        assert "a node is serving ./oms-auth.sqlite3" in line
    finally:
        await app.stop()
    assert "restored ./oms-auth.sqlite3" in oms_auth(tmp_path, "restore", "copy.sqlite3").stdout
    listed = oms_auth(tmp_path, "user", "list").stdout
    assert "kept" in listed and "after" not in listed
    assert "audit trail intact" in oms_auth(tmp_path, "audit", "verify").stdout
    app = App(settings, login_delay=0)
    await app.start()
    try:
        async with await Client.connect(app.url) as c:
            reply = await c.call("AuthenticateUser", {"UserName": "kept", "Password": PASSWORD})
            assert reply.o["Authenticated"], reply.o
    finally:
        await app.stop()


def test_a_restore_of_something_that_is_not_a_store_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    oms_auth(tmp_path, "demo")
    (tmp_path / "junk.sqlite3").write_bytes(b"not a database" * 100)
    before = (tmp_path / "oms-auth.sqlite3").read_bytes()
    refused = oms_auth(tmp_path, "restore", "junk.sqlite3", check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert (tmp_path / "oms-auth.sqlite3").read_bytes() == before


async def admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
async def test_a_pg_dump_restored_into_a_fresh_database_serves(tmp_path: Path, db: str) -> None:
    settings = settings_for(tmp_path, db=db)
    app = App(settings, login_delay=0)
    await app.start()
    try:
        await make_user(app.deps, "kept", totp_secret="JBSWY3DPEHPK3PXPJBSWY3DP")
    finally:
        await app.stop()
    schema = parse_url(db).schema
    base = db.split("?")[0]
    dump = tmp_path / "oms-auth.dump"
    subprocess.run(
        ["pg_dump", "--format=custom", f"--schema={schema}", "-f", str(dump), base], check=True
    )
    fresh = "kr_" + uuid.uuid4().hex[:10]
    await admin(f"CREATE DATABASE {fresh}")
    try:
        target = base.rsplit("/", 1)[0] + f"/{fresh}"
        subprocess.run(["pg_restore", "--no-owner", f"--dbname={target}", str(dump)], check=True)
        restored = settings_for(
            tmp_path, db=f"{target}?schema={schema}", secret_key_file=settings.secret_key_file
        )
        app = App(restored, login_delay=0)
        await app.start()
        try:
            async with await Client.connect(app.url) as c:
                login = {"UserName": "kept", "Password": PASSWORD}
                assert (await c.call("AuthenticateUser", login)).o["Requires2FA"]
            assert (await app.deps.store.verify_audit()).ok
        finally:
            await app.stop()
    finally:
        await admin(f"DROP DATABASE IF EXISTS {fresh} WITH (FORCE)")


@pytest.mark.parametrize("command", ["user list", "audit", "audit verify", "user unlock x"])
def test_a_read_only_command_on_a_missing_store_exits_2_and_creates_nothing(
    tmp_path: Path, command: str
) -> None:
    refused = oms_auth(tmp_path, *command.split(), "--db", "absent.sqlite3", check=False)
    assert refused.returncode == 2
    assert refused.stderr == (
        "oms-auth: there is no store at absent.sqlite3: give --db the store's path"
        " (a read-only command creates none)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_commands_that_create_a_store_say_so_once(tmp_path: Path) -> None:
    add = f"user add --username ann --email a@x.test --password {PASSWORD}".split()
    first = oms_auth(tmp_path, *add)
    assert first.stderr == "created a new store at ./oms-auth.sqlite3\n"
    second = oms_auth(tmp_path, *add[:3], "bob", *add[4:])
    assert second.stderr == ""
    assert (
        "created a new store at demo.sqlite3"
        in oms_auth(tmp_path, "demo", "--db", "demo.sqlite3").stderr
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "oms_auth.cli", "serve", "--port", "0", "--db", "s.sqlite3"],
        cwd=tmp_path,
        env={**os.environ, **FAST},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stdout is not None and "listening" in serve.stdout.readline()
    finally:
        serve.terminate()
        _, err = serve.communicate(timeout=30)
    assert "created a new store at s.sqlite3" in err


def test_backup_and_restore_on_postgresql_point_to_pg_dump_and_pg_restore(tmp_path: Path) -> None:
    for command in ("backup", "restore"):
        db = "postgresql://postgres@127.0.0.1:5432/test?schema=unused"
        refused = oms_auth(tmp_path, command, "x.dump", "--db", db, check=False)
        assert refused.returncode == 2
        assert "pg_dump --format=custom and restore with pg_restore" in refused.stderr
    assert list(tmp_path.iterdir()) == []
