"""Shared test helpers: a movable clock, cheap-but-real settings, user creation."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from oms_auth.config import Settings
from oms_auth.engine.deps import Deps
from oms_auth.engine.users import create_user


class Clock:
    """A clock tests move by hand: expiry and lockout without sleeping."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Real Argon2id at the lowest cost, a store and a Maildir in ``tmp_path``, port 0. With a
    PostgreSQL ``db`` the key file goes in ``tmp_path`` too (not the working directory)."""
    values: dict[str, Any] = dict(
        db=str(tmp_path / "oms-auth.sqlite3"),
        port=0,
        mail=f"maildir:{tmp_path / 'mail'}",
        argon2_time_cost=1,
        argon2_memory_kib=64,
        mail_retry_seconds=0.05,
    )
    values.update(overrides)
    if is_postgres(values["db"]):
        values.setdefault("secret_key_file", str(tmp_path / "oms-auth.key"))
    return Settings(**values)


PASSWORD = "Correct-Horse9"


async def make_user(deps: Deps, username: str, **kwargs: Any) -> int:
    kwargs.setdefault("email", f"{username}@example.test")
    kwargs.setdefault("password", PASSWORD)
    return await create_user(deps, username=username, **kwargs)


def store_bytes(db: str) -> bytes:
    """Everything the store holds on disk: the database and its write-ahead log."""
    data = b""
    for suffix in ("", "-wal", "-shm"):
        path = Path(db + suffix)
        if path.exists():
            data += path.read_bytes()
    return data


async def wait_for_mail(maildir: Path, count: int, timeout: float = 10) -> list[Path]:
    """The messages in ``maildir/new`` once there are ``count`` of them (oldest first)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        new = maildir / "new"
        files = sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns) if new.exists() else []
        if len(files) >= count or loop.time() > deadline:
            assert len(files) >= count, f"{len(files)} messages, expected {count}"
            return files
        await asyncio.sleep(0.02)


def parse_mail(path: Path) -> dict[str, Any]:
    """A delivered message: headers, both parts, and the reset link's fields if it has one."""
    import email
    import re
    from email import policy

    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    out: dict[str, Any] = {"msg": msg, "text": text, "html": html, "to": msg["To"]}
    link = re.search(r"(\S+/reset\?UserId=(\d+)&PendingCode=([0-9a-f-]+))", text)
    if link:
        out.update(link=link[1], user_id=int(link[2]), code=link[3])
    return out


# Real Argon2id at its lowest cost, for commands run as subprocesses.
FAST = {"OMS_AUTH_ARGON2_TIME_COST": "1", "OMS_AUTH_ARGON2_MEMORY_KIB": "64"}


def oms_auth(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the oms-auth command in ``tmp_path`` as a user would (``input_text``: its stdin)."""
    full_env = {**os.environ, **FAST, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "oms_auth.cli", *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        input=input_text,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


async def eventually(check: Any, timeout: float = 10) -> None:
    """Wait until ``check()`` (sync or async) is true: for effects of background work."""
    import asyncio
    import inspect

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class ServerProcess:
    """``oms-auth serve --port 0`` as a real process: started, killed or stopped by signal."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.args = args
        self.env = {**os.environ, **FAST, **(env or {})}
        self.proc: Any = None
        self.url = ""

    async def start(self) -> str:
        import asyncio
        import re

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "oms_auth.cli",
            "serve",
            "--port",
            "0",
            *self.args,
            cwd=self.cwd,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
        match = re.search(r"listening on (wss?://\S+)", line)
        assert match, line
        self.url = match[1]
        return self.url

    async def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> str:
        """SIGTERM; asserts a clean exit and returns what it printed after the first line."""
        import asyncio
        import signal

        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.proc.wait(), 30) == 0
        return (await self.proc.stdout.read()).decode()


# -- the two stores ---------------------------------------------------------------------------
# Store-backed tests run once per store (the ``db`` fixture in conftest.py). The postgres runs
# use this server (CI starts it: .ci/run), each test in a fresh schema dropped afterwards. An
# unreachable server fails those tests; it never skips them.

PG_URL = os.environ.get("OMS_AUTH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
STORES = ("sqlite", "postgres")


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def run_async(coro: Any) -> Any:
    """Run a coroutine from synchronous code (a fixture) on a thread of its own, so no event
    loop of the test's is touched."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def schema_of(db: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(db).query).get("schema", ["public"])[0]


def new_pg_schema() -> str:
    """A ``--db`` URL naming a fresh schema (the store creates it); fails the test, with the
    reason, when PostgreSQL does not answer."""
    import uuid

    import asyncpg
    import pytest

    async def check() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        await conn.close()

    try:
        run_async(check())
        problem = None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problem = str(exc) or type(exc).__name__
    if problem is not None:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_URL} ({problem}): the postgres tests need it. "
            "Start it (.ci/run does) or point OMS_AUTH_TEST_POSTGRES at one.",
            pytrace=False,
        )
    # Two test workers may each run two nodes with bursts at once: 10 connections a node (not
    # the default 20) keep them well under the server's default limit of 100.
    own = f"schema=t_{uuid.uuid4().hex[:16]}&pool_max=10"
    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}{own}"


def drop_pg_schema(db: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema_of(db)}" CASCADE')
        finally:
            await conn.close()

    run_async(drop())


async def pg_connect(db: str) -> Any:
    """A plain asyncpg connection to ``db``'s schema: for tests that look inside the store."""
    import asyncpg

    return await asyncpg.connect(PG_URL, server_settings={"search_path": schema_of(db)})


async def sql(db: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` (``?`` placeholders) on either store, as tests look inside it. On
    PostgreSQL a query of the audit trail first waits for the nodes' linkers to link what is
    pending (docs/performance.md: decisions' audit rows are linked after commit)."""
    if is_postgres(db):
        parts = query.split("?")
        query = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
        conn = await pg_connect(db)
        try:
            if re.search(r"\bFROM audit\b", query):
                await _linked(conn)
            if query.lstrip().upper().startswith("SELECT"):
                return [tuple(r) for r in await conn.fetch(query, *args)]
            await conn.execute(query, *args)
            return []
        finally:
            await conn.close()
    import aiosqlite

    async with aiosqlite.connect(db) as conn:
        rows = [tuple(r) for r in await conn.execute_fetchall(query, args)]
        await conn.commit()
        return rows


async def _linked(conn: Any, timeout: float = 10.0) -> None:
    """Wait until no audit row is pending (a node's linker links them within milliseconds)."""
    deadline = time.monotonic() + timeout
    if await conn.fetchval("SELECT to_regclass('audit_pending')") is None:
        return  # a schema not created yet, or from before pending rows
    while await conn.fetchval("SELECT count(*) FROM audit_pending"):
        assert time.monotonic() < deadline, "audit rows stayed pending"
        await asyncio.sleep(0.01)


async def store_contents(db: str) -> bytes:
    """Everything the store holds: the SQLite files' bytes, or every value of every table of
    the PostgreSQL schema (bytea as the raw bytes, everything else as its text)."""
    if not is_postgres(db):
        return store_bytes(db)
    conn = await pg_connect(db)
    try:
        await _linked(conn)  # rows moving from pending to the chain are no change
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            schema_of(db),
        )
        assert tables, "no tables in the schema"
        out = []
        for (table,) in tables:
            for row in await conn.fetch(f'SELECT * FROM "{table}"'):
                for value in row.values():
                    out.append(value if isinstance(value, bytes) else str(value).encode())
        return b"\n".join(out)
    finally:
        await conn.close()


async def terminate_backends(db: str) -> int:
    """pg_terminate_backend every connection oms-auth holds on ``db``'s schema (pools and
    listeners of every node), and wait until they are gone; returns how many there were."""
    import asyncio

    rows = await sql(
        db,
        "SELECT array_agg(pid) FROM pg_stat_activity"
        " WHERE application_name LIKE ? AND pid <> pg_backend_pid()",
        f"oms-auth% {schema_of(db)}",
    )
    pids = rows[0][0] or []
    await sql(db, "SELECT pg_terminate_backend(pid) FROM unnest(?::int[]) pid", pids)

    async def gone() -> bool:
        left = await sql(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = any(?)", pids)
        return bool(left[0][0] == 0)

    await eventually(gone)
    await asyncio.sleep(0.1)  # and each node has read its connections' end
    return len(pids)


def npm_client(folder: Path, package: str, name: str) -> Path:
    """``package`` (name@version) installed from the npm registry into ``folder`` once, as a
    published client is kept between runs; the folder."""
    if not (folder / "node_modules" / name).exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund", package],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return folder
