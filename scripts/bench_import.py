"""``oms-auth user import`` of generated users on SQLite and PostgreSQL, beside a bare batched
INSERT of the same rows in the same run (docs/performance.md, "Importing users").

    python -m scripts.bench_import                 # 1,000,000 users, both stores
    python -m scripts.bench_import --users 20000 --stores sqlite

Each user has a name, an email, a bcrypt hash (as an exchange's export holds them: kept as
they are, so no hashing at import), an OMS and an account. The import runs as the real command
in a process of its own (its peak RSS is that process's); the bare INSERT puts the same five
values into one table with a unique index on the name, 1,000 rows per transaction (SQLite in
WAL mode with synchronous=FULL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["main"]

PG_URL = os.environ.get("OMS_AUTH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
# One real bcrypt hash (cost 4) of "Correct-Horse9": a hash is kept as it is at import.
HASH = "$2b$04$AivDkhz088nJQLfjz8nBzOahmfM6raVdzs2IWGOnjA4iIqQ5ZWSmK"
BATCH = 1000


def _rows(n: int) -> Iterator[tuple[str, str, str, int, int]]:
    for i in range(n):
        yield f"trader{i:07d}", f"trader{i:07d}@example.test", HASH, 1, 100000 + i


def _write_file(path: Path, n: int) -> None:
    with path.open("w") as out:
        for name, email, hashed, oms, account in _rows(n):
            row = {"UserName": name, "Email": email, "PasswordHash": hashed, "OMSId": oms}
            out.write(json.dumps({**row, "AccountId": account}) + "\n")


def _import(db: str, path: Path, cwd: Path) -> tuple[float, float, int, str]:
    """Seconds, CPU seconds, peak RSS (bytes) and summary line of ``oms-auth user import`` in a
    process of its own. CPU seconds say what the import costs whatever else the machine runs."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "oms_auth.cli", "--db", db, "user", "import", str(path)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"import failed on {db}: {out}")
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, usage.ru_maxrss * 1024, out.strip()


def _bare_sqlite(folder: Path, n: int) -> float:
    path = folder / "bare.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL, email TEXT,"
        " password_hash TEXT, oms_id INTEGER, account_id INTEGER)"
    )
    conn.execute("CREATE UNIQUE INDEX users_by_name ON users(username)")
    started = time.perf_counter()
    batch: list[tuple[str, str, str, int, int]] = []
    for row in _rows(n):
        batch.append(row)
        if len(batch) == BATCH:
            _sqlite_batch(conn, batch)
    _sqlite_batch(conn, batch)
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def _sqlite_batch(conn: sqlite3.Connection, batch: list[tuple[str, str, str, int, int]]) -> None:
    if batch:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO users (username, email, password_hash, oms_id, account_id)"
            " VALUES (?, ?, ?, ?, ?)",
            batch,
        )
        conn.execute("COMMIT")
        batch.clear()


async def _bare_postgres(schema: str, n: int) -> float:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            f'CREATE TABLE "{schema}".users (id BIGSERIAL PRIMARY KEY, username TEXT NOT NULL,'
            " email TEXT, password_hash TEXT, oms_id BIGINT, account_id BIGINT)"
        )
        await conn.execute(f'CREATE UNIQUE INDEX ON "{schema}".users(username)')
        insert = (
            f'INSERT INTO "{schema}".users (username, email, password_hash, oms_id, account_id)'
            " VALUES ($1, $2, $3, $4, $5)"
        )
        started = time.perf_counter()
        batch: list[tuple[str, str, str, int, int]] = []
        for row in _rows(n):
            batch.append(row)
            if len(batch) == BATCH:
                async with conn.transaction():
                    await conn.executemany(insert, batch)
                batch.clear()
        if batch:
            async with conn.transaction():
                await conn.executemany(insert, batch)
        return time.perf_counter() - started
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def _drop(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _case(store: str, folder: Path, path: Path, n: int) -> list[str]:
    if store == "sqlite":
        seconds, cpu, rss, line = _import(str(folder / "oms-auth.sqlite3"), path, folder)
        bare = _bare_sqlite(folder, n)
    else:
        schema = f"bench_import_{uuid.uuid4().hex[:12]}"
        try:
            url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"
            seconds, cpu, rss, line = _import(url, path, folder)
        finally:
            asyncio.run(_drop(schema))
        bare = asyncio.run(_bare_postgres(schema + "_bare", n))
    rate, bare_rate = n / seconds, n / bare
    return [
        f"| {store} | {n:,} | {seconds:.1f} | {cpu:.1f} | {rate:,.0f} | {rss / 2**20:.0f} |"
        f" {bare_rate:,.0f} | {rate / bare_rate:.2f}x |",
        f"  ({line})",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--quick", action="store_true", help="2,000 users: a smoke run")
    args = parser.parse_args(argv)
    n = 2000 if args.quick else args.users
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        folder = Path(tmp)
        path = folder / "users.jsonl"
        _write_file(path, n)
        print(
            "| store | users | import s | import CPU s | import rows/s | peak RSS MiB"
            " | bare rows/s | ratio |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for store in args.stores.split(","):
            lines = _case(store, folder, path, n)
            print(lines[0])
            print(lines[1], file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
