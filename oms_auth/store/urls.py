"""What a ``--db`` value names: PostgreSQL (a URL taken apart) or a SQLite file.

The URL is ``postgresql://USER@HOST:PORT/DBNAME`` (or ``postgres://``) with optional query
parameters of our own, removed before the URL reaches asyncpg: ``schema`` (default ``public``;
created if missing), ``pool_min``/``pool_max`` (1/20), ``command_timeout`` (30 s),
``connect_timeout`` (10 s). Anything else is a SQLite path, or ``sqlite:PATH``.

No secret leaves this module in a repr or an error: the DSN may hold a password.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from .records import StoreError

__all__ = ["is_postgres_url", "sqlite_path", "PgTarget", "parse_url"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def is_postgres_url(url: str) -> bool:
    """Whether a ``--db`` value names PostgreSQL (anything else is a SQLite file)."""
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str) -> str:
    """The file a ``--db`` value names: a path, or ``sqlite:PATH``."""
    return url.removeprefix("sqlite://").removeprefix("sqlite:")


# Pooled connections per node. Measured on a 2-core machine with a reset request's transaction
# in one round trip: two nodes at 20 each answered 64 connections' resets at a p99 of 90-104
# ms against 134-156 at 10, at the same rate; one node within the noise either way
# (docs/performance.md, "The pool, once the transaction is one trip").
POOL_MIN, POOL_MAX = 1, 20


class PgTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A ``--db`` URL taken apart: what asyncpg gets, and our own settings."""

    dsn: str
    schema: str = "public"
    where: str = "localhost:5432"
    pool_min: int = POOL_MIN
    pool_max: int = POOL_MAX
    command_timeout: float = 30.0
    connect_timeout: float = 10.0

    def __repr__(self) -> str:  # the DSN may hold a password
        return f"PgTarget(where={self.where!r}, schema={self.schema!r})"


_OWN_PARAMS = {
    "schema": str,
    "pool_min": int,
    "pool_max": int,
    "command_timeout": float,
    "connect_timeout": float,
}


def parse_url(url: str) -> PgTarget:
    """Split our query parameters off a ``postgresql://`` URL; StoreError when one is bad."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    own: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in query:
        kind = _OWN_PARAMS.get(name)
        if kind is None:
            rest.append((name, value))
            continue
        try:
            own[name] = kind(value)
        except ValueError:
            raise StoreError(f"PostgreSQL URL: {name}={value!r} is not a {kind.__name__}") from None
    schema = own.get("schema", "public")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise StoreError(
            f"PostgreSQL URL: schema={schema!r} must be lower-case letters, digits and _ "
            "(at most 63, not starting with a digit)"
        )
    if not 1 <= own.get("pool_min", POOL_MIN) <= own.get("pool_max", POOL_MAX):
        raise StoreError("PostgreSQL URL: need 1 <= pool_min <= pool_max")
    try:
        url_port = parts.port
    except ValueError:
        raise StoreError(
            f"PostgreSQL URL: the port of {parts.hostname!r} is not a number"
        ) from None
    host = parts.hostname or dict(rest).get("host") or "localhost"
    port = dict(rest).get("port") or (str(url_port) if url_port else "5432")
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
    return PgTarget(dsn=dsn, where=f"{host}:{port}", **own)
