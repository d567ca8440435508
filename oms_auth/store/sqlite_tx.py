"""What a write job of the SQLite store uses inside its transaction, in the writer's thread
(:mod:`.sqlite_writer`): the connection's settings, counters, the caller's authority, reading a
user's state as a named record, running a plan (:mod:`.plans`) and appending to the audit chain.
Every job runs alone in the single writer, so a read here holds until the job's commit."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from . import plans
from . import sql as q
from .audit import ChainKeys, link_entries
from .records import AuditEntry, Authority, CallerGone, Claim, Outcome

__all__ = [
    "S",
    "PRAGMAS",
    "connect",
    "count",
    "record",
    "clock",
    "authorize",
    "read_state",
    "run_plan",
    "append_audit",
]

R = TypeVar("R")
S = q.SQLITE
PRAGMAS = (
    "busy_timeout=10000",
    "foreign_keys=ON",
    # FULL: a commit is on disk before the caller is told so, power loss included.
    "synchronous=FULL",
    # Erased secrets (delivered mail, voided codes) are overwritten, not unlinked.
    "secure_delete=ON",
)
_NOW = "SELECT (julianday('now') - 2440587.5) * 86400.0"
_GONE = "the caller's session or permission is gone"


def connect(path: str) -> sqlite3.Connection:
    """The writer's connection (opened in its thread). isolation_level=None: the writer issues
    BEGIN itself, so sqlite3 never opens a transaction implicitly."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in PRAGMAS:
            raw.execute("PRAGMA " + pragma)
    except BaseException:
        raw.close()
        raise
    return raw


def count(raw: sqlite3.Connection, claim: Claim, now: float) -> int:
    """Events of ``claim``'s counter within its window."""
    args = (claim.kind, claim.key, now - claim.window)
    (found,) = raw.execute(S.count_events_since, args).fetchone()
    return int(found)


def record(raw: sqlite3.Connection, claims: Sequence[Claim], now: float) -> None:
    """One event for each claim."""
    raw.executemany(S.insert_event, [(c.kind, c.key, now) for c in claims])


def clock(raw: sqlite3.Connection) -> float:
    """The database's time, for an audit row written without a caller's ``now``."""
    (now,) = raw.execute(_NOW).fetchone()
    return float(now)


def authorize(raw: sqlite3.Connection, authority: Authority | None) -> None:
    """CallerGone unless ``authority`` still holds. First in a write job: the single writer
    orders it against every revocation, so what it saw holds until the commit."""
    if authority is not None:
        if raw.execute(S.authority_holds, q.authority_args(authority)).fetchone() is None:
            raise CallerGone(_GONE)


def read_state(
    raw: sqlite3.Connection, state: Callable[..., R], sql: str, user_id: int
) -> R | None:
    """The user's row read by ``sql``, as ``state`` names its columns; None when gone."""
    row = raw.execute(sql, (user_id,)).fetchone()
    return None if row is None else state(*row)


def run_plan(raw: sqlite3.Connection, plan: plans.Plan) -> Outcome:
    """Run a plan's steps (see :mod:`.plans`): its outcome, or the first failed step's."""
    for step in plan.steps:
        if raw.execute(step.sql, step.args).rowcount != 1 and step.unless is not None:
            return step.unless
    return plan.outcome


def append_audit(
    raw: sqlite3.Connection, audit_key: ChainKeys, entries: Sequence[AuditEntry], now: float
) -> None:
    """Link ``entries`` onto the audit chain (inside the write job: its tail cannot move)."""
    if entries:
        tail = raw.execute(S.audit_tail).fetchone()
        raw.executemany(S.insert_audit, link_entries(audit_key, tail, entries, now))
