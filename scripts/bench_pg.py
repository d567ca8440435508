"""The benchmark's PostgreSQL side (``--db postgresql://...``): a database of the run's own,
the service key both nodes share, and the processes serving that database.

The bench never touches anything it did not make: it creates ``oms_bench_<random>`` on the
server the URL names (connecting to the URL's own database to do so) and drops only that one
when the run ends, so other users of a shared server are not disturbed. The server processes
measured are those ``pg_stat_activity`` lists for that database (every pooled connection and
listener of every node), so their CPU is the database's work for the bench alone.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .bench_procs import log

__all__ = ["PgRun", "pg_database"]


@dataclass(frozen=True)
class PgRun:
    """The run's own database: ``url`` for ``--db`` (with the caller's query parameters, such as
    ``pool_max``), ``dsn`` for a plain connection to it, ``env`` the nodes' shared key."""

    url: str
    dsn: str
    database: str
    env: dict[str, str]

    def spec(self) -> dict[str, str]:
        """What the load generator needs to find this database's server processes."""
        return {"dsn": self.dsn, "database": self.database}


async def _admin(dsn: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _with_path(url: str, path: str, keep_query: bool) -> str:
    parts = urlsplit(url)
    query = parts.query if keep_query else ""
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


@contextmanager
def pg_database(url: str) -> Iterator[PgRun]:
    """A fresh database for this run on the server ``url`` names; dropped on leaving."""
    database = f"oms_bench_{secrets.token_hex(6)}"
    admin = _with_path(url, urlsplit(url).path, keep_query=False)
    asyncio.run(_admin(admin, f'CREATE DATABASE "{database}"'))
    log(f"PostgreSQL: created database {database} for this run")
    key = {"OMS_AUTH_SECRET_KEY": secrets.token_hex(32)}
    try:
        yield PgRun(
            url=_with_path(url, "/" + database, keep_query=True),
            dsn=_with_path(url, "/" + database, keep_query=False),
            database=database,
            env=key,
        )
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        log(f"PostgreSQL: dropped database {database}")
