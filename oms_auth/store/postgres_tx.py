"""How a transaction runs on the PostgreSQL store: its connection type, the row locks a write
made for a caller takes, advisory lock keys, a plan's steps run, and PostgreSQL's text rules
(no NUL). The locking each rule relies on is described in :mod:`.postgres`."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import asyncpg
import msgspec

from . import plans
from . import sql as q
from .records import IN_FLIGHT_SECONDS, AuditEntry, Authority, CallerGone, Claim, Outcome
from .urls import PgTarget

if TYPE_CHECKING:
    from .postgres_pool import Conn, FairPool

__all__ = [
    "S",
    "ADVISORY_LOCK",
    "CONNECTION_ERRORS",
    "lock_key",
    "lock_for",
    "row_locks",
    "read_state",
    "run_plan",
    "count_of",
    "fails_unless",
    "attempts",
    "RELEASE_EVENT",
    "SETTLE_EVENT",
    "committing",
    "LOCK_USER",
    "SHARE_USER",
    "AUTHORITY_SHARED",
    "GONE",
    "joined",
    "plain_write",
    "keep_session",
    "audit_entry",
    "unreachable",
]

R = TypeVar("R")
S = q.POSTGRES

# What a lost or unreachable database raises (asyncpg's own errors, the socket's, a timeout).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
ADVISORY_LOCK = "SELECT pg_advisory_xact_lock($1)"
LOCK_USER = "SELECT 1 FROM users WHERE id = $1 FOR UPDATE"
SHARE_USER = "SELECT 1 FROM users WHERE id = $1 FOR SHARE"
AUTHORITY_SHARED = S.authority_holds + " FOR SHARE OF s"
# The advisory lock in the projection over the locked subquery (never pulled up: it locks rows):
# taken once the session row is locked, as the lock order wants; not at all (no row, None) when
# the authority is gone. '' when it holds.
_AUTHORITY_THEN_LOCK = f"SELECT pg_advisory_xact_lock($6)::text FROM ({AUTHORITY_SHARED}) held"
GONE = "the caller's session or permission is gone"


# One event (of several alike), an attempt's in flight first.
RELEASE_EVENT = (
    "DELETE FROM events WHERE ctid = (SELECT ctid FROM events"
    " WHERE kind = $1 AND key = $2 AND at = $3 ORDER BY in_flight DESC LIMIT 1)"
)
SETTLE_EVENT = (
    "UPDATE events SET in_flight = 0 WHERE ctid = (SELECT ctid FROM events"
    " WHERE kind = $1 AND key = $2 AND at = $3 AND in_flight = 1 LIMIT 1)"
)


async def attempts(conn: Conn, claim: Claim, now: float) -> tuple[int, int]:
    """Events of a login attempt's counter within its window, and how many are in flight."""
    key = S.event_key(claim.key)
    args = (now - IN_FLIGHT_SECONDS, claim.kind, key, now - claim.window)
    row = await conn.fetchrow(S.count_attempts_since, *args)
    assert row is not None
    return int(row[0]), int(row[1])


def unreachable(target: PgTarget, exc: BaseException) -> str:
    """Why the database ``target`` names cannot be used, in one line (no secret: no password)."""
    if isinstance(exc, TimeoutError):
        reason = f"no answer within {target.connect_timeout:g} s"
    elif isinstance(exc, asyncpg.PostgresError):
        reason = f"the server refused: {exc}"
    else:
        reason = str(exc) or type(exc).__name__
    return f"cannot reach PostgreSQL at {target.where}: {reason}"


async def keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """What a pooled connection needs when it goes back to the pool: nothing. asyncpg rolls
    back a transaction left open before calling this; beyond that this store leaves no session
    state behind (transaction-scoped advisory locks only, no SET, no cursor, LISTEN only on
    the listener's own connection), so asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``,
    ``pg_advisory_unlock_all()``: a round trip on every release) would undo nothing
    (docs/performance.md, "What bounds each figure")."""


def lock_key(*parts: str) -> int:
    """A 64-bit advisory lock key for these parts."""
    raw = "\x1f".join(("oms-auth", *parts)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big", signed=True)


def row_locks(user_id: int | None, authority: Authority | None) -> list[tuple[int, str]]:
    """The user rows a write locks, in the lock order (the lower id first, so two writes for
    two callers never wait in a cycle): the one written for ``FOR UPDATE``, the caller's ``FOR
    SHARE``; each ``(id, statement)``."""
    rows = [] if user_id is None else [(user_id, LOCK_USER)]
    if authority is not None and authority.user_id != user_id:
        rows.append((authority.user_id, SHARE_USER))
    return sorted(rows)


async def lock_for(
    conn: Conn, user_id: int | None, authority: Authority | None, then: int | None = None
) -> None:
    """Lock the row of the user written for (``FOR UPDATE``) and the caller's (``FOR SHARE``),
    the lower id first so two writes for two callers never wait in a cycle; then CallerGone
    unless the caller's authority still holds (its session row ``FOR SHARE``); then the
    advisory lock ``then``, if given, which comes next in the lock order (taken in the
    authority check's statement, once its row is locked: one round trip fewer)."""
    for uid, statement in row_locks(user_id, authority):
        await conn.execute(statement, uid)
    if authority is None:
        if then is not None:
            await conn.execute(ADVISORY_LOCK, then)
        return
    args = q.authority_args(authority)
    if then is None:
        held = await conn.fetchval(AUTHORITY_SHARED, *args)
    else:
        held = await conn.fetchval(_AUTHORITY_THEN_LOCK, *args, then)
    if held is None:
        raise CallerGone(GONE)


async def read_state(conn: Conn, record: Callable[..., R], sql: str, user_id: int) -> R | None:
    """The user's row read (and locked) by ``sql``, as ``record`` names its columns; None when
    gone."""
    row = await conn.fetchrow(sql, user_id)
    return None if row is None else record(*row)


async def run_plan(conn: Conn, plan: plans.Plan) -> Outcome:
    """Run a plan's steps (see :mod:`.plans`): its outcome, or the first failed step's."""
    for step in plan.steps:
        status = await conn.execute(step.sql, *step.args)
        if step.unless is not None and count_of(status) != 1:
            return step.unless
    return plan.outcome


_WRITES = ("INSERT ", "UPDATE ", "DELETE ")
_PARAMETER = re.compile(r"\$(\d+)")


def plain_write(sql: str) -> bool:
    """A write that ``joined`` may put in a ``WITH`` part (it returns nothing)."""
    return sql.startswith(_WRITES) and " RETURNING " not in sql


@functools.lru_cache(maxsize=64)
def joined(statements: Sequence[str]) -> str:
    """Plain writes independent of each other's effects as ONE statement (one round trip
    instead of one per write: docs/performance.md): ``WITH w0 AS (first), w1 AS (second)
    last``, each part's ``$n`` moved past the parts before it. The parts all see the rows as
    they were before the statement, which for such writes is what running them in turn gives."""
    parts: list[str] = []
    offset = 0

    def moved(match: re.Match[str]) -> str:
        return f"${int(match[1]) + offset}"

    for sql in statements:
        parts.append(_PARAMETER.sub(moved, sql))
        offset += max((int(n) for n in _PARAMETER.findall(sql)), default=0)
    head = ", ".join(f"w{k} AS ({sql})" for k, sql in enumerate(parts[:-1]))
    return f"WITH {head} {parts[-1]}" if head else parts[-1]


def fails_unless(condition: str, mark: str) -> str:
    """An expression that is 0 when ``condition`` holds and otherwise fails the query with
    ``mark`` in its error (a cast of the marked text to a number): a simple query answers with
    no rows, so a check that must stop one fails it (the rest, COMMIT included, is skipped and
    the transaction is left to roll back). ``mark`` is the store's own text, never a value."""
    return f"(CASE WHEN {condition} THEN '0' ELSE '{mark}' END)::int"


def count_of(status: str) -> int:
    """The row count of a command status such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


def audit_entry(e: AuditEntry) -> AuditEntry:
    """An audit entry PostgreSQL can store (what is hashed is what is stored)."""
    return msgspec.structs.replace(
        e,
        action=e.action.replace("\x00", "\ufffd"),
        target_name=S.text(e.target_name),
        source=S.text(e.source),
        detail=S.text(e.detail),
    )


@contextlib.asynccontextmanager
async def committing(pool: FairPool) -> AsyncIterator[Conn]:
    """One pooled connection for one transaction that the block begins in its first round trip
    and commits in its last (``postgres_batch``); rolled back when the block leaves it open."""
    async with pool.acquire() as conn:
        try:
            yield conn
        finally:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
