"""docs/operations.md, "The service key": it is created only for an empty store. A store that
holds anything sealed (TOTP secrets, API secrets, queued mail, the keyed audit chain) or a key
fingerprint refuses to start with a missing or a different key, with exit status 2 and one line
naming the key file, on SQLite as on PostgreSQL, whatever command opens it. A lost key file must
never silently become a new key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import FAST, is_postgres, oms_auth, run_async, sql

ALICE = "user add --username alice --email a@x.test --password Sekrit-Pass1"
TOTP = "--totp-secret JBSWY3DPEHPK3PXPJBSWY3DP"

# Every command that opens the store, as a user types it.
COMMANDS = {
    "serve": ["serve", "--port", "0"],
    "user add": "user add --username bob --email b@x.test --password Pw-1a2b3c4d5e".split(),
    "user list": ["user", "list"],
    "audit": ["audit"],
    "audit verify": ["audit", "verify"],
    "demo": ["demo"],
}


def key_file(tmp_path: Path, db: str) -> Path:
    """Where the key goes by default: beside the SQLite file, else the working directory."""
    return tmp_path / ("oms-auth.key" if is_postgres(db) else "oms-auth.sqlite3.key")


def store_path(tmp_path: Path, db: str) -> str:
    return db if is_postgres(db) else str(tmp_path / "oms-auth.sqlite3")


def refused(result: subprocess.CompletedProcess[str], key: Path, says: str) -> None:
    """Exit 2 with one line (log lines aside) that names the key file and says why."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("20")]
    assert len(lines) == 1, result.stderr
    assert str(key) in lines[0] and says in lines[0], lines[0]
    assert "listening" not in result.stdout


def run(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return oms_auth(tmp_path, *args, check=False)
    except subprocess.TimeoutExpired:  # a serve that started (or hung) instead of refusing
        pytest.fail(f"{' '.join(args)} did not exit")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_store_holding_sealed_data_refuses_every_command_when_the_key_file_is_missing(
    tmp_path: Path, store_env: str, command: str
) -> None:
    oms_auth(tmp_path, *f"{ALICE} {TOTP}".split())
    key = key_file(tmp_path, store_env)
    saved = key.read_bytes()
    key.unlink()
    refused(run(tmp_path, COMMANDS[command]), key, "missing")
    assert not key.exists()  # no new key was made in its place
    # With the key back, everything is as it was: the TOTP user and the audit chain.
    key.write_bytes(saved)
    key.chmod(0o600)
    assert "alice" in oms_auth(tmp_path, "user", "list").stdout
    assert "audit trail intact" in oms_auth(tmp_path, "audit", "verify").stdout


def test_a_different_key_is_refused_naming_the_key_file(tmp_path: Path, store_env: str) -> None:
    oms_auth(tmp_path, *f"{ALICE} {TOTP}".split())
    key = key_file(tmp_path, store_env)
    saved = key.read_bytes()
    key.write_text("ab" * 32 + "\n")
    for command in ("user list", "serve", "audit verify"):
        refused(run(tmp_path, COMMANDS[command]), key, "differs")
    key.write_bytes(saved)
    assert "audit trail intact" in oms_auth(tmp_path, "audit", "verify").stdout


def test_a_different_key_from_the_environment_is_refused_naming_it(
    tmp_path: Path, store_env: str
) -> None:
    env = {"OMS_AUTH_SECRET_KEY": "11" * 32}
    oms_auth(tmp_path, *f"{ALICE} {TOTP}".split(), env=env)
    other = oms_auth(tmp_path, "user", "list", env={"OMS_AUTH_SECRET_KEY": "22" * 32}, check=False)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "OMS_AUTH_SECRET_KEY" in other.stderr and "differs" in other.stderr


def test_an_empty_store_gets_a_new_key_and_records_its_fingerprint(
    tmp_path: Path, store_env: str
) -> None:
    oms_auth(tmp_path, *ALICE.split())
    key = key_file(tmp_path, store_env)
    assert key.exists() and len(bytes.fromhex(key.read_text().strip())) == 32
    db = store_path(tmp_path, store_env)
    rows = run_async(sql(db, "SELECT value FROM meta WHERE key = 'key_fingerprint'"))
    assert len(rows) == 1 and len(rows[0][0]) == 64
    assert key.read_text().strip() not in rows[0][0]  # a fingerprint, never the key


def test_a_store_that_recorded_a_fingerprint_refuses_a_missing_key_even_when_emptied(
    tmp_path: Path, store_env: str
) -> None:
    oms_auth(tmp_path, *ALICE.split())
    db = store_path(tmp_path, store_env)
    for table in ("audit", "users"):
        run_async(sql(db, f"DELETE FROM {table}"))
    key = key_file(tmp_path, store_env)
    key.unlink()
    refused(run(tmp_path, COMMANDS["user list"]), key, "missing")
    assert not key.exists()


def forget_fingerprint(db: str) -> None:
    """What a store written before fingerprints were recorded looks like."""
    try:
        run_async(sql(db, "DELETE FROM meta WHERE key = 'key_fingerprint'"))
    except Exception as exc:  # a SQLite store of before: it has no meta table at all
        assert "no such table" in str(exc)


@pytest.mark.parametrize("sealed", ["totp secret", "api secret", "queued mail"])
def test_a_store_without_a_fingerprint_holding_sealed_data_refuses_a_missing_key(
    tmp_path: Path, store_env: str, sealed: str
) -> None:
    extra = {"totp secret": TOTP, "api secret": "", "queued mail": ""}[sealed]
    args = f"{ALICE} {extra}".split()
    if sealed == "queued mail":
        args = [a for a in args if a not in ("--password", "Sekrit-Pass1")] + ["--invite"]
    oms_auth(tmp_path, *args)
    db = store_path(tmp_path, store_env)
    if sealed == "api secret":
        run_async(
            sql(
                db,
                "INSERT INTO api_keys (key, user_id, permissions, secret_sealed, created_at)"
                " VALUES ('k1', 1, '[]', ?, 0)",
                b"\x01" * 40,
            )
        )
    run_async(sql(db, "DELETE FROM audit"))  # only the one sealed thing is left
    forget_fingerprint(db)
    key = key_file(tmp_path, store_env)
    key.unlink()
    refused(run(tmp_path, COMMANDS["user list"]), key, "missing")
    assert not key.exists()


def test_a_store_without_a_fingerprint_takes_only_the_key_its_audit_chain_was_made_with(
    tmp_path: Path, store_env: str
) -> None:
    oms_auth(tmp_path, *f"{ALICE} {TOTP}".split())
    db = store_path(tmp_path, store_env)
    forget_fingerprint(db)
    key = key_file(tmp_path, store_env)
    saved = key.read_bytes()
    key.write_text("cd" * 32 + "\n")
    refused(run(tmp_path, COMMANDS["user list"]), key, "differs")
    key.write_bytes(saved)  # the right key: taken, and from now on known by its fingerprint
    assert "alice" in oms_auth(tmp_path, "user", "list").stdout
    rows = run_async(sql(db, "SELECT value FROM meta WHERE key = 'key_fingerprint'"))
    assert len(rows) == 1


def test_commands_started_at_once_on_a_new_store_share_one_key(
    tmp_path: Path, store_env: str
) -> None:
    """Four processes, no store and no key yet: one writes the key (under the store's lock),
    the others read it: each process's audit row verifies under that one key."""
    env = {**os.environ, **FAST}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "oms_auth.cli",
                *f"{ALICE} {TOTP}".replace("alice", f"u{n}").split(),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    key = key_file(tmp_path, store_env)
    assert len(bytes.fromhex(key.read_text().strip())) == 32
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{key.name}.")]
    assert "audit trail intact: 4 rows" in oms_auth(tmp_path, "audit", "verify").stdout
    listed = oms_auth(tmp_path, "user", "list").stdout
    assert all(f"u{n}" in listed for n in range(4)) and listed.count("totp") == 4
