"""docs/operations.md, "Rotating the service key": the key file is a ring (a current key and older
ones, each with an id); ``key rotate`` adds a new current key and re-seals everything under it,
``key list`` prints one line per key, ``key retire ID`` drops an old key once nothing is sealed
with it (refused before, saying how much remains); every sealed value and audit row names its
key, and ``audit verify`` holds across rotations; a node whose ring lacks the store's current
key is refused, naming it; a running node takes up a new ring within 10 seconds."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyotp
import pytest

from oms_auth.app import App
from oms_auth.crypto import Sealer
from oms_auth.keyring import MAGIC, legacy_id, read_ring, sealed_prefix, write_ring
from protocol.client import Client

from .helpers import FAST, PASSWORD, ServerProcess, eventually, oms_auth, settings_for, sql
from .test_files import mode, umask
from .test_service_key import key_file

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"
ALICE = f"user add --username alice --email a@x.test --password {PASSWORD} --totp-secret {SECRET}"


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as answer:
        return str(answer.read().decode())


def key_ids(tmp_path: Path) -> list[str]:
    return [line.split()[0] for line in oms_auth(tmp_path, "key", "list").stdout.splitlines()]


async def totp_sealed(db: str) -> bytes:
    ((value,),) = await sql(db, "SELECT totp_sealed FROM users WHERE username = 'alice'")
    return bytes(value)


def test_a_single_key_file_from_before_rings_is_a_ring_of_one_named_by_its_key(
    tmp_path: Path, store_env: str
) -> None:
    oms_auth(tmp_path, *ALICE.split())
    key = key_file(tmp_path, store_env)
    raw = bytes.fromhex(key.read_text())  # the form every earlier oms-auth wrote
    listed = oms_auth(tmp_path, "key", "list").stdout.splitlines()
    assert len(listed) == 1
    assert re.fullmatch(rf"{legacy_id(raw)}  \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ  current", listed[0])


async def test_rotate_reseals_every_value_and_the_audit_chain_verifies_across_it(
    tmp_path: Path, store_env: str
) -> None:
    oms_auth(tmp_path, *ALICE.split())
    (old,) = key_ids(tmp_path)
    done = oms_auth(tmp_path, "key", "rotate").stdout
    new, older = key_ids(tmp_path)
    assert older == old and new != old
    assert f"key {new} is current; re-sealed 1 values under it" in done
    assert (await totp_sealed(store_env)).startswith(sealed_prefix(new))
    assert oms_auth(tmp_path, "key", "list").stdout.splitlines()[0].endswith("  current")
    oms_auth(tmp_path, *"user unlock alice".split())  # a row chained with the new key
    rows = await sql(store_env, "SELECT key_id FROM audit ORDER BY id")
    assert [r[0] for r in rows] == [old, new]
    assert "audit trail intact" in oms_auth(tmp_path, "audit", "verify").stdout
    assert "retired key" in oms_auth(tmp_path, "key", "retire", old).stdout
    assert "audit trail intact" in oms_auth(tmp_path, "audit", "verify").stdout
    assert key_file(tmp_path, store_env).stat().st_mode & 0o777 == 0o600


def test_retiring_a_key_that_still_seals_values_is_refused_with_the_count(
    tmp_path: Path, store_env: str
) -> None:
    oms_auth(tmp_path, *ALICE.split())
    key = key_file(tmp_path, store_env)
    ring = read_ring(key)
    assert ring is not None
    old = ring.current.id
    write_ring(key, ring.rotated(time.time()), replace=True)  # rotated, nothing re-sealed yet
    refused = oms_auth(tmp_path, "key", "retire", old, check=False)
    assert refused.returncode == 2
    assert f"key {old} still seals 1 values (totp_secrets 1)" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert old in key_ids(tmp_path)
    current = oms_auth(tmp_path, "key", "retire", key_ids(tmp_path)[0], check=False)
    assert current.returncode == 2 and "is the current key: rotate first" in current.stderr


def test_a_node_whose_ring_lacks_the_stores_current_key_is_refused_naming_it(
    tmp_path: Path, store_env: str
) -> None:
    oms_auth(tmp_path, *ALICE.split())
    key = key_file(tmp_path, store_env)
    before = key.read_bytes()
    oms_auth(tmp_path, "key", "rotate")
    new = key_ids(tmp_path)[0]
    key.write_bytes(before)  # a node still given the ring from before the rotation
    refused = oms_auth(tmp_path, "user", "list", check=False)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert f"is on (key {new}): the key file {key} does not hold it" in line, line


def test_the_ring_can_be_given_as_ids_and_base64_in_the_environment(
    tmp_path: Path, store_env: str
) -> None:
    oms_auth(tmp_path, *ALICE.split())
    oms_auth(tmp_path, "key", "rotate")
    ring = read_ring(key_file(tmp_path, store_env))
    assert ring is not None
    value = ",".join(f"{k.id}:{base64.b64encode(k.key).decode()}" for k in ring.keys)
    key_file(tmp_path, store_env).unlink()
    env = {"OMS_AUTH_SECRET_KEY": value}
    assert "alice" in oms_auth(tmp_path, "user", "list", env=env).stdout
    assert "audit trail intact" in oms_auth(tmp_path, "audit", "verify", env=env).stdout
    wrong = oms_auth(tmp_path, "user", "list", env={"OMS_AUTH_SECRET_KEY": "k1"}, check=False)
    assert wrong.returncode == 2 and "id:base64,id:base64" in wrong.stderr


def test_a_value_sealed_before_key_ids_still_opens_and_new_ones_name_their_key() -> None:
    key = bytes(range(32))
    old_style = Sealer(key)
    legacy_blob = old_style.seal(b"secret", b"ctx")[len(sealed_prefix(legacy_id(key))) :]
    assert not legacy_blob.startswith(MAGIC)  # as sealed before ids: nonce first
    ring = old_style.ring.rotated(time.time())
    sealer = Sealer(ring)
    assert sealer.open(legacy_blob, b"ctx") == b"secret"
    assert sealer.seal(b"x", b"ctx").startswith(sealed_prefix(ring.current.id))
    with pytest.raises(ValueError):
        sealer.open(legacy_blob, b"other context")


async def test_a_running_node_takes_up_a_rotation_and_reseals_with_progress_in_metrics(
    tmp_path: Path, db: str
) -> None:
    settings = settings_for(tmp_path, db=db)
    app = App(settings, login_delay=0)
    await app.start()
    try:
        env = {"OMS_AUTH_DB": db, "OMS_AUTH_SECRET_KEY_FILE": str(settings.key_file())}
        oms_auth(tmp_path, *ALICE.split(), env=env)
        ring = read_ring(settings.key_file())
        assert ring is not None
        rotated = ring.rotated(time.time())
        write_ring(settings.key_file(), rotated, replace=True)  # as key rotate writes it
        await eventually(lambda: app.deps.sealer.ring.current.id == rotated.current.id, 10)
        await eventually(lambda: app.keys is not None and app.keys.resealer.done >= 1, 10)
        assert (await totp_sealed(db)).startswith(sealed_prefix(rotated.current.id))
        async with await Client.connect(app.url) as c:
            first = await c.call("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD})
            assert first.o["Requires2FA"], first.o
            done = await c.call("Authenticate2FA", {"Code": pyotp.TOTP(SECRET).now()})
            assert done.o["Authenticated"], done.o
        text = await asyncio.to_thread(metrics, app.port)
        assert re.search(r"^oms_auth_key_resealed [1-9]", text, re.M), text
        assert "oms_auth_key_reseal_left 0" in text
        rows = await sql(db, "SELECT value FROM meta WHERE key = 'current_key_id'")
        assert rows == [(rotated.current.id,)]
        assert json.loads(settings.key_file().read_text())["keys"][0]["id"] == rotated.current.id
    finally:
        await app.stop()


async def test_sighup_makes_a_serving_node_take_up_the_ring_and_it_keeps_serving(
    tmp_path: Path,
) -> None:
    oms_auth(tmp_path, *ALICE.split())
    server = ServerProcess(tmp_path)
    await server.start()
    try:
        with umask(0):
            oms_auth(tmp_path, "key", "rotate")
        assert mode(tmp_path / "oms-auth.sqlite3.key") == 0o600  # whatever the umask
        new = key_ids(tmp_path)[0]
        server.proc.send_signal(signal.SIGHUP)
        async with await Client.connect(server.url) as c:
            first = await c.call("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD})
            done = await c.call("Authenticate2FA", {"Code": pyotp.TOTP(SECRET).now()})
            assert done.o["Authenticated"], (first.o, done.o)
        assert server.proc.returncode is None
    finally:
        out = await server.stop()
    assert "stopped" in out
    rows = await sql(
        str(tmp_path / "oms-auth.sqlite3"), "SELECT value FROM meta WHERE key = ?", "current_key_id"
    )
    assert rows == [(new,)]


async def test_values_and_audit_rows_from_before_key_ids_open_rotate_and_verify_after_retiring(
    tmp_path: Path, store_env: str
) -> None:
    oms_auth(tmp_path, *ALICE.split())
    (old,) = key_ids(tmp_path)
    # As an oms-auth before key ids left them: no id in the sealed value, none on the rows.
    bare = (await totp_sealed(store_env))[len(sealed_prefix(old)) :]
    await sql(store_env, "UPDATE users SET totp_sealed = ? WHERE username = 'alice'", bare)
    await sql(store_env, "UPDATE audit SET key_id = NULL")
    assert "audit trail intact: 1 rows" in oms_auth(tmp_path, "audit", "verify").stdout
    rotated = oms_auth(tmp_path, "key", "rotate")
    assert "re-sealed 1 values" in rotated.stdout
    new = key_ids(tmp_path)[0]
    assert (await totp_sealed(store_env)).startswith(sealed_prefix(new))
    assert "retired key" in oms_auth(tmp_path, "key", "retire", old).stdout
    oms_auth(tmp_path, *"user unlock alice".split())
    assert "audit trail intact: 2 rows" in oms_auth(tmp_path, "audit", "verify").stdout
    assert f"{old}  " in oms_auth(tmp_path, "key", "list").stdout.splitlines()[-1]


def test_rotating_a_ring_given_in_the_environment_is_refused_saying_where_to_change_it(
    tmp_path: Path,
) -> None:
    env = {"OMS_AUTH_SECRET_KEY": "ab" * 32}
    oms_auth(tmp_path, *ALICE.split(), env=env)
    refused = oms_auth(tmp_path, "key", "rotate", env=env, check=False)
    assert refused.returncode == 2
    assert "OMS_AUTH_SECRET_KEY: change the variable on every node" in refused.stderr
    assert (
        f"{legacy_id(bytes.fromhex('ab' * 32))}  "
        in oms_auth(tmp_path, "key", "list", env=env).stdout
    )


def test_rotations_run_at_once_each_keep_their_key_in_the_ring(
    tmp_path: Path, store_env: str
) -> None:
    # Each rotate reads the ring, adds a key and writes it whole: run together, a later write
    # dropped a key that an earlier one had already made the store's current key.
    oms_auth(tmp_path, *ALICE.split())
    env = {**os.environ, **FAST}
    command = [sys.executable, "-m", "oms_auth.cli", "key", "rotate"]
    made: list[str] = []
    for _ in range(2):
        runs = [
            subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        for run in runs:
            out, _ = run.communicate(timeout=60)
            made += re.findall(r"key (k[0-9a-f]+) is current", out)
    ring = key_ids(tmp_path)
    assert made and all(key_id in ring for key_id in made), (made, ring)
    assert "audit trail intact" in oms_auth(tmp_path, "audit", "verify").stdout
