"""What a write job of the SQLite store uses inside its transaction, in the writer's thread
(:mod:`.sqlite_writer`): the connection's settings, counters, the caller's authority, reading a
user's state as a named record, running a plan (:mod:`.plans`) and appending to the audit chain.
Every job runs alone in the single writer, so a read here holds until the job's commit."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import msgspec

from . import import_plan, plans
from . import sql as q
from .audit import ChainKeys, link_entries
from .import_plan import Written
from .records import (
    IN_FLIGHT_SECONDS,
    AuditEntry,
    Authority,
    CallerGone,
    Claim,
    ImportItem,
    NewUser,
    Outcome,
    Slot,
)

__all__ = [
    "insert_user",
    "import_batch",
    "import_args",
    "ImportArgs",
    "insert_rows",
    "bulk_insert",
    "S",
    "PRAGMAS",
    "connect",
    "count",
    "attempts",
    "record",
    "settle",
    "RELEASE_EVENT",
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


# The event loop's connection for reads by key never writes, and never waits long: a reader
# is never blocked by the writer in WAL mode, so only another program's exclusive lock could
# make it wait, and then the loop would wait with it.
_KEYED = ("query_only=ON", "busy_timeout=100")


def connect(path: str, *, keyed: bool = False) -> sqlite3.Connection:
    """The writer's connection (opened in its thread), or with ``keyed`` the event loop's for
    reads by key (used only in the thread that opens it). isolation_level=None: the writer
    issues BEGIN itself, so sqlite3 never opens a transaction implicitly."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in PRAGMAS + (_KEYED if keyed else ()):
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


def attempts(raw: sqlite3.Connection, claim: Claim, now: float) -> tuple[int, int]:
    """Events of a login attempt's counter within its window, and how many are in flight."""
    args = (now - IN_FLIGHT_SECONDS, claim.kind, claim.key, now - claim.window)
    total, flying = raw.execute(S.count_attempts_since, args).fetchone()
    return int(total), int(flying)


# One event (of several alike), an attempt's in flight first.
RELEASE_EVENT = (
    "DELETE FROM events WHERE rowid = (SELECT rowid FROM events"
    " WHERE kind = ? AND key = ? AND at = ? ORDER BY in_flight DESC LIMIT 1)"
)
_SETTLE_EVENT = (
    "UPDATE events SET in_flight = 0 WHERE rowid = (SELECT rowid FROM events"
    " WHERE kind = ? AND key = ? AND at = ? AND in_flight = 1 LIMIT 1)"
)


def settle(raw: sqlite3.Connection, slots: Sequence[Slot]) -> None:
    """The attempts these slots counted failed: their events stay, as failures."""
    raw.executemany(_SETTLE_EVENT, slots)


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
        rows = link_entries(audit_key, tail, entries, now)
        if len(rows) == 1:
            raw.execute(S.insert_audit, rows[0])
        else:  # the time (column 1) bound as it is: it is part of each row's hash
            insert_rows(raw, S.insert_audit, rows, fixed=(1,))


@functools.lru_cache(maxsize=32)
def bulk_insert(insert: str, fixed: tuple[int, ...] = ()) -> str:
    """``insert`` (``INSERT INTO t (a, b, ...) VALUES (?, ?, ...)[ rest]``) made to insert
    every row of a JSON array of rows bound as ``?1``; the columns ``fixed`` take the
    parameters after it (``?2``, ...), the same for every row (their values in the rows are
    not read)."""
    head, _, values = insert.partition(" VALUES (")
    marks, _, rest = values.partition(")")
    width = marks.count("?")
    if not head.startswith("INSERT INTO ") or marks != ", ".join("?" * width):
        raise ValueError(f"not a plain INSERT ... VALUES: {insert}")
    columns = [f"?{fixed.index(i) + 2}" if i in fixed else f"v ->> {i}" for i in range(width)]
    # MATERIALIZED: each row's text is taken out of the array once, not once per column (and
    # parsed once: SQLite keeps the last JSON texts it parsed); WHERE true: an upsert's ON
    # CONFLICT would otherwise read as a join's ON.
    return (
        "WITH r(v) AS MATERIALIZED (SELECT value FROM json_each(?1))"
        f" {head} SELECT {', '.join(columns)} FROM r WHERE true{rest}"
    )


def insert_rows(
    raw: sqlite3.Connection,
    insert: str,
    rows: Sequence[Sequence[object]],
    fixed: tuple[int, ...] = (),
    text: bytes | None = None,
) -> None:
    """``rows`` (each ``insert``'s arguments) inserted in one statement, the batch as one JSON
    text: one step of SQLite for the batch, where executemany takes one per row and lets go of
    the interpreter lock and takes it back around each (the thread reading the file wants it
    too), and one value bound, not one per column and row. The columns ``fixed`` hold the
    same value in every row: bound once, from the first row (a float, say, as it is: SQLite's
    JSON might not read its text back to the last bit). SQLite's JSON ends a text at a NUL
    character: a batch holding one goes through ``insert`` a row at a time. ``text``: the
    rows' JSON text when the caller made it already."""
    if not rows:
        return
    if text is None:
        text = _encoder.encode(rows)
    if b"\\u0000" in text:
        raw.executemany(insert, rows)
    else:
        bound = [rows[0][i] for i in fixed]
        raw.execute(bulk_insert(insert, fixed), (text.decode(), *bound))


def insert_user(raw: sqlite3.Connection, user: NewUser) -> int:
    """A new user's rows (its name checked by the caller); its id."""
    (user_id,) = raw.execute(S.insert_user, q.user_args(user)).fetchone()
    raw.executemany(S.insert_account, q.account_args(user))
    raw.executemany(S.insert_user_account, q.user_account_args(user_id, user))
    raw.executemany(S.insert_permission, [(user_id, p) for p in user.permissions])
    raw.executemany(S.insert_question, [(user_id, question, a) for question, a in user.questions])
    return int(user_id)


# "Any of these": a JSON array of the batch's values, one statement for the whole batch.
_ANY = " IN (SELECT value FROM json_each(?))"
_TAKEN = "SELECT username_key, email FROM users WHERE username_key" + _ANY
_LOOKS = "SELECT name_skeleton, username_key FROM users WHERE name_skeleton" + _ANY
# The new users' ids as one JSON object (key -> id): one step of SQLite, where a row per user
# took a step each, each giving up the interpreter lock and taking it back.
_IDS = "SELECT json_group_object(username_key, id) FROM users WHERE username_key" + _ANY
_ids = msgspec.json.Decoder(dict[str, int])
_encoder = msgspec.json.Encoder()


def _json(values: object) -> str:
    return _encoder.encode(values).decode()  # json.dumps: 6 times as long


class ImportArgs(NamedTuple):
    """What a batch's write needs that no row of the store decides: each user's
    ``insert_user`` arguments, its name's key and skeleton (as JSON arrays too, for the
    lookups), and the arguments as the JSON text :func:`insert_rows` binds. Made by
    :func:`import_args` on the caller's thread, while the writer's thread writes the batch
    before: that thread is the import's bottleneck."""

    users: list[tuple[object, ...]]
    of: import_plan.Names
    keys: str
    skeletons: str
    text: bytes


def import_args(batch: Sequence[ImportItem]) -> ImportArgs:
    args = [q.user_args(item.user, item.names) for item in batch]
    # each one's username_key and skeleton, as user_args has them (import_plan.names)
    of = import_plan.Names([str(a[1]) for a in args], [str(a[-1]) for a in args])
    return ImportArgs(args, of, _json(of.keys), _json(of.skeletons), _encoder.encode(args))


def import_batch(raw: sqlite3.Connection, batch: Sequence[ImportItem], made: ImportArgs) -> Written:
    """Write the batch's fresh users (:mod:`.import_plan` decides)."""
    of = made.of
    taken = raw.execute(_TAKEN, (made.keys,)).fetchall()
    looks = raw.execute(_LOOKS, (made.skeletons,)).fetchall()
    found = import_plan.conflicts(batch, of, taken, looks)
    fresh = [item.user for item, clash in zip(batch, found, strict=True) if clash is None]
    users = [a for a, clash in zip(made.users, found, strict=True) if clash is None]
    text = made.text if len(users) == len(batch) else None  # all fresh: the text made before
    highest = {
        oms: raw.execute(import_plan.HIGHEST_ACCOUNT, (oms,)).fetchone()[0]
        for oms in import_plan.needing_accounts(fresh)
    }
    if highest:  # some are given an account: their first account is a column of theirs
        fresh = import_plan.with_new_accounts(fresh, highest)
        names = [(str(a[1]), str(a[-1])) for a in users]  # the same names, as made before
        users, text = [q.user_args(u, n) for u, n in zip(fresh, names, strict=True)], None
    ids: dict[str, int] = {}
    if fresh:
        insert_rows(raw, S.insert_user.removesuffix(" RETURNING id"), users, text=text)
        keys = [str(row[1]) for row in users]
        ids = _ids.decode(raw.execute(_IDS, (_json(keys),)).fetchone()[0])
        statements = (S.insert_account, S.insert_user_account, S.insert_permission)
        rows = import_plan.dependents([ids[k] for k in keys], fresh)
        for statement, values in zip((*statements, S.insert_question), rows, strict=True):
            insert_rows(raw, statement, values)
    written = import_plan.written(batch, found, ids, of)
    raw.executemany(S.set_totp, written.sealed)
    return written
