"""docs/operations.md, "The command line": the oms-auth command, run as a user runs it (a real
process). The commands that use a store run on both: SQLite by default (``./oms-auth.sqlite3``),
PostgreSQL through ``OMS_AUTH_DB``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from oms_auth.config import ConfigError, load_settings
from oms_auth.engine.reset import REQUESTS_ANONYMOUS
from oms_auth.store import Claim, username_key
from protocol.client import Client

from .helpers import (
    FAST,
    ServerProcess,
    is_postgres,
    oms_auth,
    run_async,
    settings_for,
    sql,
    store_contents,
)
from .store_helpers import issue, redeem

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


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("--security-question Pet?", "--security-question and --security-answer go together"),
        ("--security-answer Rex", "--security-question and --security-answer go together"),
        ("--totp-secret SHORT", "--totp-secret must be base32 of at least 80 bits"),
    ],
)
def test_user_add_names_the_flag_whose_value_is_refused(
    tmp_path: Path, store_env: str, extra: str, says: str
) -> None:
    refused = add(tmp_path, extra, check=False)
    # (A first command on a new store also says it created it: the line before.)
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1] == f"oms-auth: {says}"
    assert oms_auth(tmp_path, "user", "list").stdout.count("\n") == 1  # the heading alone


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


_REQUESTS = Claim(REQUESTS_ANONYMOUS, username_key("trader1"), 3600, 3)


async def _spoil_the_demo(tmp_path: Path, db: str) -> bytes:
    """What a walk-through (and worse) leaves: changed passwords, a lock, a session, an API
    key, TOTP turned on and changed, a recovery code, questions changed and added, an
    invitation used. The
    trader1 session's digest."""
    from oms_auth.app import build_deps
    from oms_auth.crypto import digest, new_pending_code
    from oms_auth.engine import totp
    from oms_auth.engine.apikeys import ApiKeys
    from oms_auth.engine.caller import Caller
    from oms_auth.engine.links import user_mail
    from oms_auth.engine.sessions import Sessions
    from oms_auth.store import AccountChange, AuditEntry

    deps = await build_deps(settings_for(tmp_path, db=db))
    store, now = deps.store, deps.clock()
    note = AuditEntry(action="test")

    async def user(name: str) -> Any:
        found = await store.user_by_name(name)
        assert found is not None
        return found

    async def new_password(name: str, password: str) -> None:
        code = digest(new_pending_code())
        target = await user(name)
        mail = user_mail("password-changed", target, {"changed_at": now})
        await issue(store, target.id, code, now, now + 60, mail, [note])
        await redeem(store, target.id, code, await deps.hasher.hash(password), now, mail)

    try:
        sessions = Sessions(deps, delay_unit=0)
        login = await sessions.authenticate("trader1", "Heron-Trade-3141", "test")
        assert login.token_digest is not None
        trader1 = await user("trader1")
        me = Caller(
            user=trader1,
            session=login.token_digest,
            password_version=trader1.password_version,
            proved_at=now,
        )
        await ApiKeys(sessions).add(me, None, ["Trading"], "test")
        for name in ("trader1", "master", "newhire"):
            await new_password(name, "Another-Pass-2718")
        await store.set_lock(trader1.id, now + 1800, note)
        for _ in range(3):  # the walk-through's self-service reset, three times this hour
            assert await store.reserve([_REQUESTS], now) is not None
        assert await store.reserve([_REQUESTS], now) is None
        for name in ("trader2", "master"):
            target = await user(name)
            await store.set_totp(target.id, totp.seal_secret(deps.sealer, target.id, "KRSXG5A" * 4))
        codes = (b"r" * 32,)  # a recovery code made
        made = AccountChange(
            user_id=(await user("master")).id,
            password_version=None,
            recovery_codes=codes,
            audit=note,
        )
        await store.change_account(made, now)
        for name in ("master", "boss"):
            questions = (("Favourite colour?", await deps.hasher.hash("blue")),)
            change = AccountChange(
                user_id=(await user(name)).id,
                password_version=None,
                questions=questions,
                audit=note,
            )
            await store.change_account(change, now)
        return login.token_digest
    finally:
        await store.close()
        deps.hasher.close()


async def _the_demo_as_printed(tmp_path: Path, db: str, session: bytes) -> None:
    from oms_auth.app import build_deps
    from oms_auth.cli import DEMO_USERS
    from oms_auth.engine import totp

    deps = await build_deps(settings_for(tmp_path, db=db))
    store = deps.store
    try:
        for spec in DEMO_USERS:
            user = await store.user_by_name(spec["username"])
            assert user is not None
            if spec["password"] is None:
                assert user.invited
            else:
                assert await deps.hasher.verify(user.password_hash, spec["password"]), user
            assert user.locked_until is None
            secret = user.totp_sealed and totp.open_secret(deps.sealer, user.id, user.totp_sealed)
            assert secret == spec.get("totp_secret"), user.username
            questions = await store.security_questions(user.id)
            assert [q.question for q in questions] == (
                [spec["question"]] if spec.get("question") else []
            )
            for q in questions:
                assert await deps.hasher.verify(q.answer_hash, spec["answer"].casefold())
            assert await store.api_keys(user.id) == []
            assert await store.recovery_codes_left(user.id) == 0
        assert await store.session(session) is None
        # The request limits start again: the walk-through can run once more.
        assert await store.reserve([_REQUESTS], deps.clock()) == [0]
    finally:
        await store.close()
        deps.hasher.close()


def test_demo_reset_puts_the_demo_users_back_as_printed(tmp_path: Path, store_env: str) -> None:
    first = oms_auth(tmp_path, "demo").stdout
    db = store_env if is_postgres(store_env) else str(tmp_path / "oms-auth.sqlite3")
    session = run_async(_spoil_the_demo(tmp_path, db))
    spoiled = oms_auth(tmp_path, "demo").stdout
    assert "(changed since)" in spoiled and "(set by the user)" in spoiled
    again = oms_auth(tmp_path, "demo", "--reset").stdout
    # What it prints is what the first run printed, each user "put back".
    assert again == first.replace("(created)", "(put back)")
    run_async(_the_demo_as_printed(tmp_path, db, session))
    # Nothing left to put back: the same again.
    assert oms_auth(tmp_path, "demo", "--reset").stdout == again
    run_async(_the_demo_as_printed(tmp_path, db, session))
    # The trail says what was done, for whom.
    trail = oms_auth(tmp_path, "audit", "--user", "trader1", "--limit", "20").stdout.splitlines()
    assert "detail=put back: nothing changed; sessions ended" in trail[0]
    assert "detail=put back: lock, password; sessions ended" in trail[1]
    assert "password-set" in trail[2] and "API keys revoked" in trail[2]
    assert "unlocked" in trail[4]


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


def test_the_wait_and_drain_settings_come_from_flags_environment_and_config_file(
    tmp_path: Path,
) -> None:
    config = tmp_path / "oms.toml"
    config.write_text("login-wait-seconds = 3\nshutdown_grace_seconds = 4\n")  # the old name
    s = load_settings({}, config_file=str(config), environ={})
    assert (s.login_wait_seconds, s.drain_seconds) == (3, 4)
    env = {"OMS_AUTH_LOGIN_WAIT_SECONDS": "5", "OMS_AUTH_DRAIN_SECONDS": "6"}
    s = load_settings({}, config_file=str(config), environ=env)
    assert (s.login_wait_seconds, s.drain_seconds) == (5, 6)
    s = load_settings({"login_wait_seconds": 7.0, "drain_seconds": 8.0}, environ=env)
    assert (s.login_wait_seconds, s.drain_seconds) == (7, 8)
    assert load_settings({}, environ={}).login_wait_seconds == 10


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


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_a_key_git_would_commit_is_warned_about_and_an_ignored_one_is_not(tmp_path: Path) -> None:
    checkout = tmp_path / "repo"
    checkout.mkdir()
    _git(checkout, "init", "-q")
    warning = "inside the git checkout"
    # Not ignored: one `git add -A` away from a commit.
    exposed = oms_auth(checkout, "demo", "--db", str(checkout / "x.sqlite3"))
    assert warning in exposed.stderr
    # Ignored by the checkout's .gitignore (this repository's): a default run says nothing.
    root = Path(__file__).resolve().parents[1]
    (checkout / ".gitignore").write_text((root / ".gitignore").read_text())
    for args in (["demo"], ["user", "list"], ["audit"], ["demo", "--db", "y.sqlite3"]):
        quiet = oms_auth(checkout, *args)
        assert "WARNING" not in quiet.stderr, (args, quiet.stderr)
    # A key file git tracks is not ignored, whatever .gitignore says.
    tracked = checkout / "kept.key"
    tracked.write_text("00" * 32 + "\n")
    _git(checkout, "add", "-f", "kept.key")
    env = {"OMS_AUTH_SECRET_KEY_FILE": str(tracked)}
    assert warning in oms_auth(checkout, "demo", "--db", "z.sqlite3", env=env).stderr
    # Outside any checkout: nothing to warn about.
    outside = oms_auth(tmp_path, "demo", "--db", str(tmp_path / "y.sqlite3"))
    assert warning not in outside.stderr
    # This repository's .gitignore keeps the default key files out of commits.
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
