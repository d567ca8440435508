"""How a transaction runs on the PostgreSQL store: its connection type, the row locks a write
made for a caller takes, advisory lock keys, a plan's steps run, and PostgreSQL's text rules
(no NUL). The locking each rule relies on is described in :mod:`.postgres`."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import asyncpg
import msgspec

from . import plans
from . import sql as q
from .records import IN_FLIGHT_SECONDS, AuditEntry, Authority, CallerGone, Claim, Outcome
from .urls import PgTarget

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A pooled connection inside one of this store's transactions.
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]

__all__ = [
    "S",
    "ADVISORY_LOCK",
    "CONNECTION_ERRORS",
    "lock_key",
    "lock_for",
    "read_state",
    "run_plan",
    "run_together",
    "count_of",
    "attempts",
    "RELEASE_EVENT",
    "SETTLE_EVENT",
    "committing",
    "begin_counted",
    "literal",
    "inline",
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
_LOCK_USER = "SELECT 1 FROM users WHERE id = $1 FOR UPDATE"
_SHARE_USER = "SELECT 1 FROM users WHERE id = $1 FOR SHARE"
_AUTHORITY_SHARED = S.authority_holds + " FOR SHARE OF s"
# The advisory lock in the projection over the locked subquery (never pulled up: it locks rows):
# taken once the session row is locked, as the lock order wants; not at all (no row, None) when
# the authority is gone. '' when it holds.
_AUTHORITY_THEN_LOCK = f"SELECT pg_advisory_xact_lock($6)::text FROM ({_AUTHORITY_SHARED}) held"
_GONE = "the caller's session or permission is gone"
# The authority check as a statement that FAILS when the authority is gone (the cast of this
# text to a number), so that it can run in one simple query with the statements after it,
# whose results the client cannot read one by one; '{take}' is what it runs once the session
# row is locked (the limit's advisory lock, or nothing).
_GONE_MARK = "oms-auth: the authority of the caller is gone"
_AUTHORITY_OR_FAIL = (
    "SELECT {take} FROM (SELECT count(*) AS n FROM (" + _AUTHORITY_SHARED + ") a) held"
    f" WHERE (CASE WHEN n > 0 THEN '0' ELSE '{_GONE_MARK}' END)::int = 0"
)
# A counter's events within its window, at most $4 of them: a simple query gives the client
# only its last statement's row count, and a limit's decision needs no more than its limit.
_COUNT_CAPPED = S.count_events_since.replace("SELECT count(*) ", "SELECT 1 ", 1) + " LIMIT $4"
assert _COUNT_CAPPED.startswith("SELECT 1 FROM events ")


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


async def lock_for(
    conn: Conn, user_id: int | None, authority: Authority | None, then: int | None = None
) -> None:
    """Lock the row of the user written for (``FOR UPDATE``) and the caller's (``FOR SHARE``),
    the lower id first so two writes for two callers never wait in a cycle; then CallerGone
    unless the caller's authority still holds (its session row ``FOR SHARE``); then the
    advisory lock ``then``, if given, which comes next in the lock order (taken in the
    authority check's statement, once its row is locked: one round trip fewer)."""
    rows = [] if user_id is None else [(user_id, _LOCK_USER)]
    if authority is not None and authority.user_id != user_id:
        rows.append((authority.user_id, _SHARE_USER))
    for uid, statement in sorted(rows):
        await conn.execute(statement, uid)
    if authority is None:
        if then is not None:
            await conn.execute(ADVISORY_LOCK, then)
        return
    args = q.authority_args(authority)
    if then is None:
        held = await conn.fetchval(_AUTHORITY_SHARED, *args)
    else:
        held = await conn.fetchval(_AUTHORITY_THEN_LOCK, *args, then)
    if held is None:
        raise CallerGone(_GONE)


async def begin_counted(
    conn: Conn,
    user_id: int | None,
    authority: Authority | None,
    then: int | None,
    claim: Claim | None,
    now: float,
) -> int:
    """``BEGIN``, :func:`lock_for`'s row locks, authority check and advisory lock ``then``, and
    the count of ``claim``'s events within its window (at most its limit: all that a limit's
    decision compares; 0 without a claim), in ONE round trip (docs/performance.md, "PostgreSQL
    against SQLite"): the same statements in the same order as taken one by one, sent as one
    simple query. Each statement of it still runs with a snapshot of its own, taken when it
    starts, so each sees what committed before it (the count, what committed before its lock
    was granted). CallerGone (the transaction left open, failed: roll it back) unless the
    caller's authority holds."""
    parts = ["BEGIN"]
    rows = [] if user_id is None else [(user_id, _LOCK_USER)]
    if authority is not None and authority.user_id != user_id:
        rows.append((authority.user_id, _SHARE_USER))
    parts += [inline(statement, (uid,)) for uid, statement in sorted(rows)]
    if authority is not None:
        take = "1" if then is None else "pg_advisory_xact_lock($6)"
        check = _AUTHORITY_OR_FAIL.replace("{take}", take)
        parts.append(inline(check, (*q.authority_args(authority), then)))
    elif then is not None:
        parts.append(inline(ADVISORY_LOCK, (then,)))
    if claim is not None:
        args = (claim.kind, S.event_key(claim.key), now - claim.window, claim.limit)
        parts.append(inline(_COUNT_CAPPED, args))
    try:
        status = await conn.execute("; ".join(parts))
    except asyncpg.InvalidTextRepresentationError as exc:
        if _GONE_MARK in str(exc):
            raise CallerGone(_GONE) from None
        raise
    return 0 if claim is None else count_of(status)


def literal(value: object) -> str:
    """``value`` as an SQL literal, for a simple query (which takes no parameters): numbers as
    numbers, bytes in hex, text dollar-quoted (nothing inside such a quote is an escape, and
    the tag is one the text does not hold, so no text can end it)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"'{value!r}'::float8"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return f"decode('{value.hex()}', 'hex')"
    if isinstance(value, str):
        n = 0
        while (value + f"$q{n}$").find(f"$q{n}$") != len(value):
            n += 1
        return f"$q{n}${value}$q{n}$"
    raise TypeError(f"no statement here takes a {type(value).__name__}")


def inline(sql: str, args: Sequence[object]) -> str:
    """``sql`` (one of this store's statements, whose only ``$`` are its parameters) with each
    ``$n`` replaced by ``args[n - 1]`` as a :func:`literal`."""
    return _PARAMETER.sub(lambda m: literal(args[int(m[1]) - 1]), sql)


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


async def run_together(conn: Conn, plan: plans.Plan, then: int | None = None) -> Outcome:
    """Run a plan whose steps write rows independent of each other's effects as ONE statement
    (one round trip instead of one per step: docs/performance.md, "What bounds each figure");
    its outcome. The steps become data-modifying ``WITH`` parts of one statement: they all see
    the rows as they were before it, which for such steps is what running them in turn gives.
    ``then``: an advisory lock the statement takes once every write is done (the next in the
    lock order; taken only when the plan's outcome is DONE). A plan with a conditional step,
    or a step that is not a plain write, runs step by step."""
    steps = plan.steps
    if any(s.unless is not None or not _plain_write(s.sql) for s in steps) or not steps:
        outcome = await run_plan(conn, plan)
        if then is not None and outcome is Outcome.DONE:
            await conn.execute(ADVISORY_LOCK, then)
        return outcome
    args: list[object] = []
    for step in steps:
        args += step.args
    if then is None:
        await conn.execute(_joined(tuple(s.sql for s in steps), False), *args)
    else:
        await conn.execute(_joined(tuple(s.sql for s in steps), True), *args, then)
    return plan.outcome


def _plain_write(sql: str) -> bool:
    return sql.startswith(_WRITES) and " RETURNING " not in sql


@functools.lru_cache(maxsize=64)
def _joined(statements: Sequence[str], lock: bool) -> str:
    """``WITH w0 AS (first), w1 AS (second) last``, each part's ``$n`` moved past the parts
    before it; with ``lock``, every part in ``WITH`` and, once all are done (their rows
    counted), the advisory lock of the last parameter."""
    parts: list[str] = []
    offset = 0

    def moved(match: re.Match[str]) -> str:
        return f"${int(match[1]) + offset}"

    for sql in statements:
        parts.append(_PARAMETER.sub(moved, sql))
        offset += max((int(n) for n in _PARAMETER.findall(sql)), default=0)
    if not lock:
        head = ", ".join(f"w{k} AS ({sql})" for k, sql in enumerate(parts[:-1]))
        return f"WITH {head} {parts[-1]}" if head else parts[-1]
    head = ", ".join(f"w{k} AS ({sql} RETURNING 1)" for k, sql in enumerate(parts))
    # The filter reads every part's rows (the writes done) before the projection takes the lock.
    done = " + ".join(f"(SELECT count(*) FROM w{k})" for k in range(len(parts)))
    take = f"pg_advisory_xact_lock(${offset + 1})"
    return f"WITH {head} SELECT {take} FROM (SELECT {done} AS n) AS done WHERE n >= 0"


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
async def committing(pool: asyncpg.Pool[asyncpg.Record]) -> AsyncIterator[Conn]:
    """One pooled connection for one transaction that the block begins in its first round trip
    (:func:`begin_counted`) and commits in its last (``postgres_audit.append_and_commit``);
    rolled back when the block leaves it open."""
    async with pool.acquire() as conn:
        try:
            yield conn
        finally:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
