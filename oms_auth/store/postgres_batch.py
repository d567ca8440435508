"""Several statements of one PostgreSQL transaction in one round trip: a reset request's
transaction in one trip instead of seven (docs/performance.md, "A reset's round trips, after
the audit lock left them" and "Where a reset request waits, and one trip for its
transaction").

Each round trip costs both processes a system call and a wake-up, which on a busy machine is
the larger part of a short statement's cost. asyncpg sends one statement per trip when it has
parameters, but a *simple query* (no parameters) may hold several statements, which PostgreSQL
runs in turn, each with a snapshot of its own taken when it starts, exactly as if they had come
one by one: a statement after a lock sees what committed before the lock was granted. So the
statements below are the store's own, in the order the store takes them one by one; only how
they travel changes.

A simple query takes no parameters, so each statement runs as ``EXECUTE name(literals)`` of a
statement prepared by name on that connection (``PREPARE``, once per connection: sent in front
of the first query that needs it), its values as literals (:func:`literal`): PostgreSQL plans
it once per connection, as it does asyncpg's own prepared statements, not on every trip.

A simple query answers only with its last statement's command tag, so nothing is read back
from the statements before ``COMMIT``; a statement that must refuse FAILS the query instead (a
cast of a marked text to a number), which stops it there and leaves the transaction to be rolled
back: the authority check when the caller's authority is gone (read back as CallerGone), and a
plan's compare-and-set step (``plans.Step.unless``) that changed no row, such as a limit's slot
when none is left (read back as that step's outcome). So a reset request's whole transaction
is one trip, and the node holds no lock while PostgreSQL waits for it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

from . import plans
from . import sql as q
from .postgres_tx import (
    ADVISORY_LOCK,
    AUTHORITY_SHARED,
    GONE,
    fails_unless,
    joined,
    plain_write,
    row_locks,
)
from .records import Authority, CallerGone, Outcome

if TYPE_CHECKING:
    from .postgres_pool import Conn

__all__ = ["Prepared", "literal"]

# The authority check as a statement that fails when the authority is gone; '{take}' is what
# it runs once the session row is locked (the limit's advisory lock, or nothing).
_GONE_MARK = "oms-auth: the authority of the caller is gone"
_AUTHORITY_OR_FAIL = (
    "SELECT {take} FROM (SELECT count(*) AS n FROM (" + AUTHORITY_SHARED + ") a) held"
    f" WHERE {fails_unless('n > 0', _GONE_MARK)} = 0"
)
_CHECK = _AUTHORITY_OR_FAIL.replace("{take}", "1")
_CHECK_THEN_LOCK = _AUTHORITY_OR_FAIL.replace("{take}", "pg_advisory_xact_lock($6)")
# A compare-and-set step: its write, failing the query when it changed no row but one.
_UNLESS_MARK = "oms-auth: a step changed no row, refused as "
_GUARDED = (
    "WITH w AS ({write} RETURNING 1)"
    f" SELECT {fails_unless('count(*) = 1', _UNLESS_MARK + '{outcome}')} FROM w"
)

# Where a text holds a dollar-quote tag of :func:`literal`'s, its number (those overlapping
# another too, as in "$q1$q2$").
_TAG_NUMBERS = re.compile(r"\$q([0-9]+)(?=\$)")

# One statement of a batch: a statement of the store's with its arguments, or literal SQL.
Part = tuple[str, Sequence[object]] | str


class _Names:
    """What one connection has prepared: the names, and the generation new names are made in."""

    def __init__(self) -> None:
        self.generation = 0
        self.done: set[str] = set()


class Prepared:
    """The store's statements prepared by name on each of its pooled connections, known by the
    backend's process id: :meth:`fresh` is the pool's ``init``, so a new connection starts with
    none, and a closed one is forgotten."""

    def __init__(self) -> None:
        self._conns: dict[int, _Names] = {}

    async def fresh(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        pid, names = conn.get_server_pid(), _Names()
        self._conns[pid] = names

        def closed(_: object) -> None:
            if self._conns.get(pid) is names:  # not a newer connection's, given the same id
                del self._conns[pid]

        conn.add_termination_listener(closed)

    async def run(self, conn: Conn, parts: Sequence[Part]) -> str:
        """Run ``parts`` in order in one round trip; the last one's command tag."""
        known = self._conns.setdefault(conn.get_server_pid(), _Names())
        head: list[str] = []
        body: list[str] = []
        names: list[str] = []
        for part in parts:
            if isinstance(part, str):
                body.append(part)
                continue
            sql, args = part
            name = f"oms_{known.generation}_{_digest(sql)}"
            if name not in known.done and name not in names:
                head.append(f"PREPARE {name} AS {sql}")
                names.append(name)
            body.append(f"EXECUTE {name}({', '.join(literal(a) for a in args)})")
        try:
            status = await conn.execute("; ".join(head + body))
        except asyncpg.InvalidTextRepresentationError as exc:
            refusal = _refusal(str(exc))
            if refusal is None:
                _unsure(known, names)
                raise
            known.done.update(names)  # every PREPARE ran before the statement that failed
            raise refusal from None
        except BaseException:
            _unsure(known, names)
            raise
        known.done.update(names)
        return str(status)

    async def transact(
        self,
        conn: Conn,
        user_id: int | None,
        authority: Authority | None,
        then: int | None,
        plan: plans.Plan,
        audit: Sequence[Part],
    ) -> Outcome:
        """One transaction in one round trip: ``BEGIN``; the row locks of the user written for
        (``FOR UPDATE``) and the caller's (``FOR SHARE``), the lower id first; the caller's
        authority (its session row ``FOR SHARE``), then the advisory lock ``then``:
        ``lock_for``'s statements, in its order; ``plan``'s steps (writes: a compare-and-set
        step as a statement of its own, the others joined into one where they follow each
        other); the statements ``audit`` (the audit rows); ``COMMIT``. ``plan``'s outcome, or
        that of its step that changed no row; CallerGone unless the caller's authority holds
        (in both cases the transaction is left open and failed: the caller rolls back)."""
        if not plan.steps:  # refused before the transaction (Plan.refused): nothing to run
            return plan.outcome
        parts: list[Part] = ["BEGIN"]
        parts += [(statement, (uid,)) for uid, statement in row_locks(user_id, authority)]
        if authority is not None:
            args = q.authority_args(authority)
            parts.append((_CHECK, args) if then is None else (_CHECK_THEN_LOCK, (*args, then)))
        elif then is not None:
            parts.append((ADVISORY_LOCK, (then,)))
        parts += [*_steps(plan.steps), *audit, "COMMIT"]
        try:
            await self.run(conn, parts)
        except _Refused as refused:
            return refused.outcome
        return plan.outcome


class _Refused(Exception):
    """A compare-and-set step changed no row: the plan answers ``outcome``."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.name)
        self.outcome = outcome


def _refusal(error: str) -> Exception | None:
    """What a failed query's marked cast stands for; None for any other failure."""
    if _GONE_MARK in error:
        return CallerGone(GONE)
    found = re.search(re.escape(_UNLESS_MARK) + r"([A-Z_]+)", error)
    return None if found is None else _Refused(Outcome[found[1]])


def _steps(steps: Sequence[plans.Step]) -> list[Part]:
    """A plan's steps as statements of one query, in order: each compare-and-set step alone,
    made to fail the query when it changes no row (so nothing after it runs); the plain writes
    between them joined (``postgres_tx.joined``: independent of each other's effects)."""
    parts: list[Part] = []
    run: list[plans.Step] = []

    def flush() -> None:
        if run:
            args = [a for step in run for a in step.args]
            parts.append((joined(tuple(step.sql for step in run)), args))
            run.clear()

    for step in steps:
        if not plain_write(step.sql):
            raise ValueError(f"not a write a batch can carry: {step.sql[:40]!r}")
        if step.unless is None:
            run.append(step)
            continue
        flush()
        parts.append((_GUARDED.format(write=step.sql, outcome=step.unless.name), step.args))
    flush()
    return parts


def _unsure(known: _Names, names: list[str]) -> None:
    """After a failed query: which of its PREPAREs ran is not known, so the connection prepares
    under names of a new generation from then on (the few left unused go with it). Once a
    connection has prepared its statements its queries carry none: nothing to do then."""
    if names:
        known.generation += 1
        known.done.clear()


@functools.lru_cache(maxsize=64)
def _digest(sql: str) -> str:
    """A statement's part of its name (the store has a few dozen statements)."""
    return hashlib.sha1(sql.encode()).hexdigest()[:16]


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
        # The tags the text holds, and the one its end would make with the closing tag's "$",
        # in one pass: the audit linker quotes a whole batch's JSON, which may hold thousands
        # (usernames such as "$q7$"), and trying tags one at a time scanned it once for each.
        held = set(_TAG_NUMBERS.findall(value + "$"))
        n = 0
        while str(n) in held:
            n += 1
        return f"$q{n}${value}$q{n}$"
    raise TypeError(f"no statement here takes a {type(value).__name__}")
