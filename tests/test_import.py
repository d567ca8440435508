"""docs/import.md: ``oms-auth user import`` and ``user export`` as a user runs them, on both
stores: rows checked as ``user add`` checks them, refusals by line, batches, a second run,
an import killed midway and run again, --dry-run, secrets never stored in the clear, and a
store moved between SQLite and PostgreSQL by export and import."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest

from oms_auth.app import App
from oms_auth.engine import transfer
from protocol.client import Client

from .helpers import (
    FAST,
    PASSWORD,
    drop_pg_schema,
    is_postgres,
    new_pg_schema,
    oms_auth,
    run_async,
    settings_for,
    sql,
    store_contents,
)
from .test_cli import store_env  # noqa: F401 (the fixture below runs every command on db)
from .test_legacy_login import legacy_count, stored_hash

SUMMARY = re.compile(
    r"imported (\d+), already there (\d+), refused (\d+) \(see above\), in [\d.]+ s"
)
BCRYPT = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def summary(out: str) -> tuple[int, int, int]:
    match = SUMMARY.fullmatch(out.strip().splitlines()[-1])
    assert match, out
    return int(match[1]), int(match[2]), int(match[3])


def user(name: str, **extra: object) -> dict[str, object]:
    return {"UserName": name, "Email": f"{name}@example.test", **extra}


ROWS: list[object] = [
    user("alice", AccountIds=[7, 9], Permissions=["Trading"], PasswordHash=BCRYPT),
    "not json",
    user("bob", Email="bob@nowhere"),
    user("ALICE"),  # the same name as line 1
    user("carol", PasswordHash="md5$salt$0123"),
    user("dave", Colour="blue"),
    user("ｅrin"),  # NFKC: erin
    user("er\u0456n"),  # looks like erin (a Cyrillic i)
    user("frank", OMSId="one"),
    user("grace", Permissions=["x" * 65]),
    user("heidi", SecurityQuestions=[{"Question": "Pet?"}]),
    user("ivan", TotpSecret="short"),
]
REFUSED = {
    2: "not a JSON object",
    3: "expected an address",
    4: "the same username as line 1",
    5: "PasswordHash is in no format",
    6: "unknown field `Colour`",
    8: "looks like the one of line 7",
    9: "Expected `int`, got `str` - at `$.OMSId`",
    10: "permission",
    11: "question",
    12: "TOTP",
}


@pytest.mark.usefixtures("store_env")
def test_each_bad_row_is_refused_by_its_line_and_the_others_are_imported(
    tmp_path: Path, db: str
) -> None:
    out = oms_auth(tmp_path, "user", "import", str(write(tmp_path / "u.jsonl", ROWS)))
    assert summary(out.stdout) == (2, 0, len(REFUSED))
    lines = out.stderr.strip().splitlines()
    if not is_postgres(db):
        assert lines[0] == "created a new store at ./oms-auth.sqlite3"  # as --db names it
        lines = lines[1:]
    assert [int(line.split(":")[0].removeprefix("line ")) for line in lines] == list(REFUSED)
    for line, reason in zip(lines, REFUSED.values(), strict=True):
        assert reason.lower() in line.lower(), line
    names = run_async(sql(db, "SELECT username, account_id FROM users ORDER BY id"))
    assert names == [("alice", 7), ("erin", 10)]  # a new account: past the batch's own 9
    again = oms_auth(tmp_path, "user", "import", "-", input_text=(tmp_path / "u.jsonl").read_text())
    assert summary(again.stdout) == (0, 2, len(REFUSED))


@pytest.mark.usefixtures("store_env")
def test_each_imported_user_has_its_own_audit_row_and_its_values_as_given(
    tmp_path: Path, db: str
) -> None:
    # Names and addresses that JSON escapes, and a batch boundary (rows go in many at a time).
    names = ['o"brien\\1', "zoë", "trader\u00e9", *(f"t{n}" for n in range(transfer.BATCH))]
    rows = [user(n, Email=f"{n}+x@example.test", AccountId=500 + i) for i, n in enumerate(names)]
    rows[1] |= {"Locale": "pt-BR", "Master": True, "EmailVerified": True, "Active": False}
    out = oms_auth(tmp_path, "user", "import", str(write(tmp_path / "u.jsonl", rows)))
    assert summary(out.stdout) == (len(names), 0, 0)
    users = run_async(
        sql(db, "SELECT id, username, email, account_id, locale, master, active FROM users")
    )
    assert sorted((u[1], u[2], u[3]) for u in users) == sorted(
        (n, f"{n}+x@example.test", 500 + i) for i, n in enumerate(names)
    )
    zoe = next(u for u in users if u[1] == "zoë")
    assert (zoe[4], bool(zoe[5]), bool(zoe[6])) == ("pt-BR", True, False)
    links = run_async(sql(db, "SELECT user_id, account_id FROM user_accounts"))
    assert sorted(links) == sorted((u[0], u[3]) for u in users)
    audit = run_async(sql(db, "SELECT action, target_id, target_name, source FROM audit"))
    assert sorted(audit) == sorted(("user-imported", u[0], u[1], "cli") for u in users)
    assert "audit trail intact" in oms_auth(tmp_path, "audit", "verify").stdout


@pytest.mark.usefixtures("store_env")
def test_dry_run_checks_every_row_and_writes_nothing(tmp_path: Path, db: str) -> None:
    oms_auth(tmp_path, "user", "import", str(write(tmp_path / "a.jsonl", [user("zed")])))
    # (sorted: PostgreSQL may hand rows back in another order after opening the store)
    before = sorted(run_async(store_contents(db)).split(b"\n"))
    out = oms_auth(tmp_path, "user", "import", "--dry-run", str(write(tmp_path / "u.jsonl", ROWS)))
    assert "would import 2, already there 0, refused 10" in out.stdout
    assert "line 8: the username looks like the one of line 7" in out.stderr
    assert sorted(run_async(store_contents(db)).split(b"\n")) == before


@pytest.mark.usefixtures("store_env")
def test_answers_are_hashed_and_totp_secrets_sealed_as_they_are_imported(
    tmp_path: Path, db: str
) -> None:
    row = user(
        "alice",
        TotpSecret=SECRET,
        SecurityQuestions=[{"Question": "Pet?", "Answer": "Rex-the-dog"}],
    )
    oms_auth(tmp_path, "user", "import", str(write(tmp_path / "u.jsonl", [row])))
    contents = run_async(store_contents(db))
    assert b"Rex-the-dog" not in contents and b"rex-the-dog" not in contents
    assert SECRET.encode() not in contents
    plain = oms_auth(tmp_path, "user", "export").stdout
    # Not counting the answer's Argon2 hash: random base64, which held "rex" by chance once.
    record = json.loads(plain)
    for question in record["SecurityQuestions"]:
        assert question.pop("AnswerHash").startswith("$argon2id$")
    assert SECRET not in plain and "rex" not in json.dumps(record).lower()
    exported = json.loads(oms_auth(tmp_path, "user", "export", "--include-secrets").stdout)
    assert exported["TotpSecret"] == SECRET
    assert exported["SecurityQuestions"][0]["AnswerHash"].startswith("$argon2id$")


def test_a_missing_store_is_made_by_import_and_refused_by_export(tmp_path: Path) -> None:
    gone = oms_auth(tmp_path, "user", "export", check=False)
    assert gone.returncode == 2 and gone.stderr.count("\n") == 1 and "no store" in gone.stderr
    assert not (tmp_path / "oms-auth.sqlite3").exists()
    nofile = oms_auth(tmp_path, "user", "import", "missing.jsonl", check=False)
    assert nofile.returncode == 2 and "no file missing.jsonl" in nofile.stderr
    dry = oms_auth(tmp_path, "user", "import", "--dry-run", str(write(tmp_path / "u.jsonl", ROWS)))
    assert "would import 2, already there 0, refused 10" in dry.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.jsonl"]  # no store, no key


@pytest.mark.usefixtures("store_env")
def test_invite_without_hash_queues_an_invitation_for_each_user_without_one(
    tmp_path: Path, db: str
) -> None:
    rows = [user("alice", PasswordHash=BCRYPT), user("bob"), user("carol")]
    path = write(tmp_path / "u.jsonl", rows)
    oms_auth(tmp_path, "user", "import", "--invite-without-hash", str(path))
    queued = run_async(sql(db, "SELECT recipient FROM outbox ORDER BY id"))
    assert queued == [("bob@example.test",), ("carol@example.test",)]


@pytest.mark.usefixtures("store_env")
@pytest.mark.slow
def test_an_import_killed_midway_finishes_when_run_again(tmp_path: Path, db: str) -> None:
    total = 6000
    oms_auth(tmp_path, "user", "import", str(write(tmp_path / "first.jsonl", [user("first")])))
    rows = [user(f"user{n:05d}", AccountIds=[n + 1]) for n in range(total)]  # ids from 1
    path = write(tmp_path / "u.jsonl", rows)
    proc = subprocess.Popen(
        [sys.executable, "-m", "oms_auth.cli", "user", "import", str(path)],
        cwd=tmp_path,
        env={**os.environ, **FAST},  # OMS_AUTH_DB set by store_env for PostgreSQL
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        count = 0
        while count < 1000 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            count = int(run_async(sql(db, "SELECT count(*) FROM users"))[0][0])
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the import ended before it was killed"
    written = int(run_async(sql(db, "SELECT count(*) FROM users"))[0][0]) - 1
    assert 0 < written < total and written % transfer.BATCH == 0  # whole batches only
    out = oms_auth(tmp_path, "user", "import", str(path))
    assert summary(out.stdout) == (total - written, written, 0)
    links = run_async(sql(db, "SELECT count(*) FROM user_accounts"))[0][0]
    assert links == total + 1  # every user whole (and the first one)


async def test_an_imported_bcrypt_user_logs_in_and_is_rehashed(app: App) -> None:
    refused: list[tuple[int, str]] = []
    lines = [json.dumps(user("alice", PasswordHash=BCRYPT)).encode()]
    tally = await transfer.import_lines(app.deps, lines, refuse=lambda n, r: refused.append((n, r)))
    assert (tally.imported, refused) == (1, [])
    assert await legacy_count(app, "bcrypt") == 1
    alice = await app.deps.store.user_by_name("alice")
    assert alice is not None
    for _ in range(2):
        async with await Client.connect(app.url) as client:
            reply = await client.call(
                "AuthenticateUser", {"UserName": "alice", "Password": PASSWORD}
            )
            assert reply.o["Authenticated"] is True
        assert (await stored_hash(app.settings.db, alice.id)).startswith("$argon2id$")
    assert await legacy_count(app, "bcrypt") == 0


# Costs no login should pay for: 4 GiB; 100,000 passes; 1,000 lanes; 2^31 bcrypt rounds.
_SALT, _HASH = "c2FsdHNhbHRzYWx0c2FsdA", "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
COSTLY = [
    f"$argon2id$v=19$m=4194304,t=1,p=1${_SALT}${_HASH}",
    f"$argon2id$v=19$m=65536,t=100000,p=1${_SALT}${_HASH}",
    f"$argon2i$v=19$m=65536,t=1,p=1000${_SALT}${_HASH}",
    "$2b$31$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234",
]


async def test_a_hash_whose_cost_no_login_should_pay_for_is_refused_at_import(app: App) -> None:
    refused: list[tuple[int, str]] = []
    rows = [user(f"costly{n}", PasswordHash=h) for n, h in enumerate(COSTLY)]
    rows.append(user("fair", PasswordHash=BCRYPT))
    lines = [json.dumps(r).encode() for r in rows]
    tally = await transfer.import_lines(app.deps, lines, refuse=lambda n, r: refused.append((n, r)))
    assert tally.imported == 1
    assert [n for n, _ in refused] == [1, 2, 3, 4]
    assert all("PasswordHash is in no format" in reason for _, reason in refused)
    assert await app.deps.store.user_by_name("costly0") is None


def _move(tmp_path: Path, source: str, target: str, name: str) -> str:
    """Export ``source``, import into ``target``: what the target then exports."""
    out = oms_auth(tmp_path, "--db", source, "user", "export").stdout
    write(tmp_path / name, out.splitlines())
    oms_auth(tmp_path, "--db", target, "user", "import", str(tmp_path / name))
    return oms_auth(tmp_path, "--db", target, "user", "export").stdout


@pytest.mark.slow
def test_a_store_moves_between_sqlite_and_postgresql_by_export_and_import(tmp_path: Path) -> None:
    sqlite_a, sqlite_b = str(tmp_path / "a.sqlite3"), str(tmp_path / "b.sqlite3")
    rows = [
        user("alice", AccountIds=[7, 9], Permissions=["Trading"], PasswordHash=BCRYPT),
        user(
            "bob", Master=True, Locale="de", SecurityQuestions=[{"Question": "Q?", "Answer": "A"}]
        ),
        user("carol", Active=False, AuthSource="saml", EmailVerified=True),
    ]
    oms_auth(tmp_path, "--db", sqlite_a, "user", "import", str(write(tmp_path / "u.jsonl", rows)))
    first = oms_auth(tmp_path, "--db", sqlite_a, "user", "export").stdout
    pg = new_pg_schema()
    try:
        assert _move(tmp_path, sqlite_a, pg, "to-pg.jsonl") == first
        assert _move(tmp_path, pg, sqlite_b, "back.jsonl") == first
        run_async(_logs_in(tmp_path, pg))
    finally:
        drop_pg_schema(pg)
    run_async(_logs_in(tmp_path, sqlite_b))


async def _logs_in(tmp_path: Path, db: str) -> None:
    app = App(settings_for(tmp_path, db=db), login_delay=0)
    await app.start()
    try:
        async with await Client.connect(app.url) as client:
            reply = await client.call(
                "AuthenticateUser", {"UserName": "alice", "Password": PASSWORD}
            )
            assert reply.o["Authenticated"] is True
    finally:
        await app.stop()


async def test_a_second_run_does_not_hash_the_answers_of_users_already_there(app: App) -> None:
    question = [{"Question": "Pet?", "Answer": "Rex"}]
    lines = [json.dumps(user(f"u{n}", SecurityQuestions=question)).encode() for n in range(3)]
    first = await transfer.import_lines(app.deps, lines, refuse=lambda n, r: None)
    hashed: list[str] = []
    real = app.deps.hasher.hash

    async def counted(secret: str) -> str:  # the real hash, counted
        hashed.append("x")
        return await real(secret)

    app.deps.hasher.hash = counted  # type: ignore[method-assign]
    again = await transfer.import_lines(app.deps, lines, refuse=lambda n, r: None)
    assert (first.imported, again.imported, again.already, hashed) == (3, 0, 3, [])


def test_a_terminal_gets_a_progress_bar_and_the_summary_line(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    path = write(tmp_path / "u.jsonl", [user(f"u{n}") for n in range(50)])
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 wide
    try:
        done = subprocess.run(
            [sys.executable, "-m", "oms_auth.cli", "user", "import", str(path)],
            cwd=tmp_path,
            env={**os.environ, **FAST},
            stdout=subprocess.PIPE,
            stderr=secondary,
            timeout=60,
        )
        os.close(secondary)
        secondary = -1
        shown = b""
        while chunk := _read(primary):
            shown += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert done.returncode == 0
    assert b"50 rows" in shown and b"rows/s" in shown, shown
    assert summary(done.stdout.decode()) == (50, 0, 0)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other side closed
        return b""


@pytest.mark.usefixtures("store_env")
def test_an_id_beyond_what_the_store_holds_refuses_its_row_and_the_others_go_on(
    tmp_path: Path, db: str
) -> None:
    # An OMSId past 64 bits stopped the whole import with a traceback, the good rows unwritten.
    rows: list[object] = [
        user("first"),
        user("huge", OMSId=10**30),
        user("wide", AccountIds=[2**63]),
        user("nought", AccountId=0),
        user("last"),
    ]
    out = oms_auth(tmp_path, "user", "import", str(write(tmp_path / "u.jsonl", rows)))
    assert summary(out.stdout) == (2, 0, 3)
    refused = [line for line in out.stderr.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0] for line in refused] == ["line 2", "line 3", "line 4"]
    names = run_async(sql(db, "SELECT username FROM users ORDER BY id"))
    assert names == [("first",), ("last",)]
