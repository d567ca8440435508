"""SPEC section 6: the oms-auth command, run as a user runs it (a real process). The commands
that use a store run on both: SQLite by default (``./oms-auth.sqlite3``), PostgreSQL through
``OMS_AUTH_DB``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from oms_auth.config import ConfigError, load_settings
from protocol.client import Client

from .helpers import FAST, ServerProcess, is_postgres, oms_auth, run_async, sql, store_contents

ALICE = "user add --username alice --email a@x.test --password Sekrit-Pass1"
SECRETS = "--totp-secret JBSWY3DPEHPK3PXPJBSWY3DP --security-question Pet? --security-answer"


@pytest.fixture
def store_env(db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every command below runs on ``db``: the default path for SQLite, OMS_AUTH_DB otherwise."""
    if is_postgres(db):
        monkeypatch.setenv("OMS_AUTH_DB", db)
    return db


def add(tmp_path: Path, extra: str = "", **kwargs: object) -> subprocess.CompletedProcess[str]:
    return oms_auth(tmp_path, *f"{ALICE} {extra}".split(), **kwargs)  # type: ignore[arg-type]


def test_user_add_prints_the_user_id_alone_on_the_last_line(tmp_path: Path, store_env: str) -> None:
    out = add(tmp_path, "--permission Trading --account 7")
    assert out.stdout.strip().splitlines()[-1] == "1"
    out = oms_auth(
        tmp_path, *"user add --username bob --email b@x.test --password Pw-123456789".split()
    )
    assert out.stdout.strip().splitlines()[-1] == "2"
    assert (tmp_path / "oms-auth.sqlite3").exists() != is_postgres(store_env)
    users = run_async(sql(store_env, "SELECT id, username FROM users ORDER BY id"))
    assert users == [(1, "alice"), (2, "bob")]


def test_a_duplicate_username_is_refused_with_a_clear_message(
    tmp_path: Path, store_env: str
) -> None:
    add(tmp_path)
    again = oms_auth(tmp_path, *ALICE.replace("alice", "ALICE").split(), check=False)
    assert again.returncode == 2 and again.stderr == "oms-auth: That username is not available\n"


def test_user_list_shows_users_and_never_hashes_or_secrets(tmp_path: Path, store_env: str) -> None:
    add(tmp_path, f"{SECRETS} Rex --master")
    out = oms_auth(tmp_path, "user", "list").stdout
    assert "alice" in out and "master totp" in out
    for secret in ("argon2", "Sekrit", "JBSWY3DP", "Rex"):
        assert secret not in out


def test_the_store_never_holds_a_totp_secret_or_answer_in_plain_form(
    tmp_path: Path, store_env: str
) -> None:
    add(tmp_path, f"{SECRETS} Rexanimal")
    raw = run_async(store_contents(store_env))
    assert b"a@x.test" in raw  # what is not secret is there to be seen
    for secret in (b"JBSWY3DP", b"Sekrit-Pass1", b"rexanimal", b"Rexanimal"):
        assert secret not in raw
    # The key: beside the SQLite file; for a database server, in the working directory.
    key = tmp_path / ("oms-auth.key" if is_postgres(store_env) else "oms-auth.sqlite3.key")
    assert key.stat().st_mode & 0o777 == 0o600


def test_user_unlock_ends_a_lockout_and_names_unknown_users(tmp_path: Path, store_env: str) -> None:
    add(tmp_path)
    assert "unlocked alice" in oms_auth(tmp_path, "user", "unlock", "ALICE").stdout
    missing = oms_auth(tmp_path, "user", "unlock", "nobody", check=False)
    assert missing.returncode == 2 and "no user named 'nobody'" in missing.stderr
    assert "unlocked" in oms_auth(tmp_path, "audit", "--user", "alice").stdout


def test_demo_creates_the_documented_users_once(tmp_path: Path, store_env: str) -> None:
    first = oms_auth(tmp_path, "demo").stdout
    for name in ("operator", "trader1", "trader2", "master", "boss", "newhire"):
        assert name in first
    assert "created" in first and "Kestrel-Op-2718" in first
    assert "(invited: the link is mailed)" in first
    assert "exists" in oms_auth(tmp_path, "demo").stdout


def test_demo_never_prints_a_password_it_no_longer_holds(tmp_path: Path, store_env: str) -> None:
    oms_auth(tmp_path, "demo")
    db = store_env if is_postgres(store_env) else str(tmp_path / "oms-auth.sqlite3")
    # The password changed since (as a reset would change it).
    run_async(sql(db, "UPDATE users SET password_hash = 'x' WHERE username = 'trader1'"))
    again = oms_auth(tmp_path, "demo").stdout
    line = next(x for x in again.splitlines() if "trader1" in x)
    assert "Heron-Trade-3141" not in line and "(changed since)" in line


def test_options_go_before_or_after_the_command_and_pipes_close_quietly(
    tmp_path: Path, store_env: str
) -> None:
    oms_auth(tmp_path, "demo")
    db = store_env if is_postgres(store_env) else str(tmp_path / "oms-auth.sqlite3")
    before = oms_auth(tmp_path, "--db", db, "user", "list").stdout
    after = oms_auth(tmp_path, "user", "list", "--db", db).stdout
    assert before == after and "trader1" in before
    # A reader that is gone (`oms-auth user list | head -1`): no traceback, exit 0.
    read, write = os.pipe()
    os.close(read)
    done = subprocess.run(
        [sys.executable, "-m", "oms_auth.cli", "user", "list", "--db", db],
        cwd=tmp_path,
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env={**os.environ, **FAST},
    )
    os.close(write)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    piped = subprocess.run(
        f"{sys.executable} -m oms_auth.cli audit --db {db} --limit 5000 | head -1",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **FAST},
    )
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr


def test_settings_come_from_flags_then_environment_then_config_file(tmp_path: Path) -> None:
    config = tmp_path / "oms.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0"\npublic-url = "https://x.test"\n')
    s = load_settings({}, config_file=str(config), environ={"OMS_AUTH_PORT": "9100"})
    assert (s.port, s.host, s.public_url) == (9100, "0.0.0.0", "https://x.test")
    s = load_settings({"port": 9200}, config_file=str(config), environ={"OMS_AUTH_PORT": "9100"})
    assert s.port == 9200
    assert load_settings({"host": "0.0.0.0"}, environ={}).resolved_public_url() == (
        "http://127.0.0.1:8765"
    )


def test_bad_settings_are_reported_not_raised(tmp_path: Path) -> None:
    config = tmp_path / "oms.toml"
    config.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings({}, config_file=str(config), environ={})
    with pytest.raises(ConfigError, match="port"):
        load_settings({}, environ={"OMS_AUTH_PORT": "eighty"})
    out = oms_auth(tmp_path, "user", "list", env={"OMS_AUTH_PORT": "eighty"}, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr


async def test_serve_prints_its_address_serves_and_stops_on_sigterm(
    tmp_path: Path, store_env: str
) -> None:
    server = ServerProcess(tmp_path)
    url = await server.start()
    async with await Client.connect(url) as client:
        assert (await client.call("Ping")).o == {"msg": "PONG"}
    assert "stopped" in await server.stop()


def test_a_key_inside_a_git_checkout_is_warned_about_and_ignored_by_ours(tmp_path: Path) -> None:
    checkout = tmp_path / "repo"
    (checkout / ".git").mkdir(parents=True)
    inside = oms_auth(checkout, "user", "list", "--db", str(checkout / "x.sqlite3"))
    assert "inside the git checkout" in inside.stderr
    outside = oms_auth(tmp_path, "user", "list", "--db", str(tmp_path / "y.sqlite3"))
    assert "inside the git checkout" not in outside.stderr
    # This repository's .gitignore keeps the default key files out of commits.
    root = Path(__file__).resolve().parents[1]
    for name in ("oms-auth.key", "oms-auth.sqlite3.key", "prod.key"):
        ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=root)
        assert ignored.returncode == 0, name


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "70000"], "port"),
        (["--mail", "smtp//oops"], "mail transport"),
        (["--db", "no-such-folder/x.sqlite3"], "does not exist"),
        (["--port", "TAKEN"], "cannot listen"),
    ],
)
def test_serve_that_cannot_start_exits_2_with_one_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    import socket
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = [port if a == "TAKEN" else a for a in args]
        if "--port" not in args:
            args += ["--port", "0"]
        started = time.monotonic()
        result = oms_auth(tmp_path, "serve", *args, check=False)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 20  # no hang
    lines = [line for line in result.stderr.splitlines() if not line.startswith("20")]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "no-such-folder").exists()  # nothing created
