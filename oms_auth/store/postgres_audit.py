"""The audit trail on PostgreSQL: written unlinked with each decision, linked into the chain
after commit by one linker at a time (docs/rules.md, "The audit trail"; docs/performance.md).

Why: the chain is one sequence per database (each row's hash covers the previous row's), so
appending to it in the deciding transaction made every write that audits, on every node, wait
for one advisory lock held until its commit: the writes of a whole cluster went one at a time,
each holding the lock across round trips and the commit's flush. Now:

- A deciding transaction inserts its entries into ``audit_pending`` (each with the time it was
  made), and commits them with its decision: durable, no lock, no read of the chain.
- A linker moves pending rows into ``audit`` in batches, in two round trips: it reads what
  is pending and the chain's tail, links the rows in the order they were written
  (:func:`.audit.link_made`), then sends one query that takes the audit lock, checks that the
  tail and the pending rows are as it read them, inserts the linked rows, deletes the pending
  ones and commits. The lock is held only while the server runs that query, never while it
  waits on a node (which may be frozen, or cut off, at any point); a pass that finds the chain
  moved reads again those of its rows still pending (it ends once another linker has linked
  them, however slow its round trips). Every node runs one; the lock makes them take turns
  (one that finds it held tries again soon); a node woken by its own writes links everyone's.
  Rows a stopped node left pending are linked by the next pass of any node, and a periodic
  pass runs while a node is idle.
- Whoever reads the trail (``audit show``, ``verify``, ``export``, the store's ``audit_rows``)
  links what is pending first, so it sees every committed decision, in the chain; it waits up
  to ``READER_WAIT_SECONDS`` for the lock, then says it cannot (StoreError, one line).
- The linker runs from the store's open to its close (a restarted node links what a killed one
  left, whether or not a request reaches it); it asks the store for its keys at each pass (a
  rotated ring chains from the moment the node takes it up); a close links only if the lock is
  free then (a node asked to stop never waits on whoever holds the chain). An import links its
  own rows holding the lock across its batch's transaction (``append_linked``): a transaction
  holding it that waits on its client over ``HOLD_IDLE_SECONDS`` is ended by the server.

Rows wait unlinked for about ``GATHER_SECONDS`` under load, up to ``IDLE_SECONDS`` when idle.
Meanwhile they are committed but not yet covered by the chain: someone who can write the
database could change or delete such a row before it is linked without the chain showing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import asyncpg
import msgspec

from ..tasks import cancel
from . import sql as q
from .audit import ChainKeys, link_entries, link_made
from .postgres_batch import literal
from .postgres_tx import CONNECTION_ERRORS, S, audit_entry, committing, fails_unless
from .records import AuditEntry, StoreError

if TYPE_CHECKING:
    from .postgres_pool import Conn, FairPool

__all__ = [
    "AuditLinker",
    "insert_pending",
    "append_linked",
    "pending_parts",
    "mails_sent",
    "INSERT_AUDIT_ROWS",
    "GATHER_SECONDS",
    "IDLE_SECONDS",
    "READER_WAIT_SECONDS",
    "HOLD_IDLE_SECONDS",
    "BUSY_SECONDS",
    "ChainBusy",
]

log = logging.getLogger("oms_auth.store")

# How long a woken linker waits before linking: the transactions that woke it commit, and
# others join the batch (one pass links many decisions).
GATHER_SECONDS = 0.01
# How often an idle linker looks for rows left pending (by a node that stopped, say).
IDLE_SECONDS = 1.0
# What a pass may meet: the database lost, or the store closed under it.
_PASS_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, StoreError)
# An import's transaction holding the audit lock that waits this long on its client (the
# process stopped, or cut off without a word) is ended by the server, and the lock with it. A
# linker's pass never holds the lock across a round trip (``_commit_linked``).
HOLD_IDLE_SECONDS = 5.0
# The setting rides on the statement that takes the lock (no round trip of its own).
_HOLD_MS = int(HOLD_IDLE_SECONDS * 1000)
_HOLD = f"set_config('idle_in_transaction_session_timeout', '{_HOLD_MS}', true)"
_TAKE_LOCK = f"SELECT {_HOLD}, pg_advisory_xact_lock($1)"
# How soon a linker that found the lock held tries again (doubling, up to IDLE_SECONDS).
BUSY_SECONDS = 0.02
# How long a reader of the trail waits for the audit lock to link what is pending first.
READER_WAIT_SECONDS = 10.0
# Rows linked per transaction.
BATCH = 2000

_PENDING_COLUMNS = "at, action, actor_id, target_id, target_name, source, detail"
_INSERT_PENDING = (
    f"INSERT INTO audit_pending ({_PENDING_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
# Many rows in one JSON parameter (an array per row): asyncpg checks each element of an array
# parameter in Python, which costs a large batch dearly.
INSERT_PENDING_ROWS = (
    f"INSERT INTO audit_pending ({_PENDING_COLUMNS}) SELECT (a->>0)::float8, a->>1,"
    " (a->>2)::bigint, (a->>3)::bigint, a->>4, a->>5, a->>6"
    " FROM json_array_elements($1::json) AS a"
)
INSERT_AUDIT_ROWS = (
    f"INSERT INTO audit ({q.AUDIT_COLUMNS}) SELECT (a->>0)::bigint, (a->>1)::float8, a->>2,"
    " (a->>3)::bigint, (a->>4)::bigint, a->>5, a->>6, a->>7, a->>8, a->>9, a->>10"
    " FROM json_array_elements($1::json) AS a"
)
# A pass reads these without the lock, and checks under it that they are still pending.
_READ_PENDING = (
    f"SELECT seq, {_PENDING_COLUMNS} FROM audit_pending WHERE seq <= $2 ORDER BY seq LIMIT $1"
)
_EVERY_SEQ = 2**63 - 1  # the bound of a pass's first read
_TAIL_ID = S.audit_tail.replace("SELECT id, hash ", "SELECT id ", 1)
assert _TAIL_ID != S.audit_tail
# What fails a pass's query: the chain or the pending rows moved since the pass read them
# (another linker, or an import, went first), or the lock was held.
_MOVED = "oms-auth: the audit chain moved"
_BUSY = "oms-auth: the audit chain is held"


def _pending_row(at: float, e: AuditEntry) -> tuple[object, ...]:
    e = audit_entry(e)  # what is linked (hashed) later is what is stored now
    return (at, e.action, e.actor_id, e.target_id, e.target_name, e.source, e.detail)


async def insert_pending(conn: Conn, entries: Sequence[AuditEntry], now: float) -> None:
    """Write ``entries``, made at ``now``, unlinked, in the caller's transaction."""
    if len(entries) == 1:
        await conn.execute(_INSERT_PENDING, *_pending_row(now, entries[0]))
    elif entries:
        await conn.execute(INSERT_PENDING_ROWS, pending_json(entries, now))


def pending_json(entries: Sequence[AuditEntry], now: float) -> str:
    """``INSERT_PENDING_ROWS``'s parameter: ``entries``, made at ``now``."""
    return msgspec.json.encode([_pending_row(now, e) for e in entries]).decode()


# A batch of delivered mail marked sent (one execution, not one per row), and with their audit
# rows: one statement, atomic alone, so no BEGIN and COMMIT trips (docs/performance.md).
_MAILS_SENT = S.mail_sent.replace("WHERE id = $2", "WHERE id = ANY($2::bigint[])")
_MAILS_SENT_AUDITED = f"WITH sent AS ({_MAILS_SENT}) " + INSERT_PENDING_ROWS.replace(
    "$1::json", "$3::json"
)


async def mails_sent(
    pool: FairPool,
    mail_ids: Sequence[int],
    now: float,
    audit: Sequence[AuditEntry],
) -> None:
    """Mark the mail ``mail_ids`` sent at ``now`` and write ``audit`` unlinked, in one round
    trip (``Store.mails_delivered``)."""
    if audit:
        await pool.execute(_MAILS_SENT_AUDITED, now, list(mail_ids), pending_json(audit, now))
    else:
        await pool.execute(_MAILS_SENT, now, list(mail_ids))


def pending_parts(
    entries: Sequence[AuditEntry], now: float
) -> list[tuple[str, tuple[object, ...]]]:
    """``entries`` as statements of a batch (``postgres_batch``), which carries ``COMMIT`` in
    the same round trip: one prepared insert each, planned once per connection like the
    statements before it (a literal ``INSERT`` was parsed and planned on every trip)."""
    return [(_INSERT_PENDING, _pending_row(now, e)) for e in entries]


async def append_linked(
    conn: Conn, keys: ChainKeys, lock: int, entries: Sequence[AuditEntry], now: float
) -> None:
    """Link ``entries`` into the chain in ``conn``'s transaction, holding the audit ``lock`` to
    its commit: for an import, whose batch of a thousand rows takes the lock once and has no
    other writer to wait for it. Between its statements the server waits on the client at
    most ``HOLD_IDLE_SECONDS``, but within one of the extended protocol (a statement being
    prepared, or bound and not yet executed) with no time limit: so what it sends under the
    lock is either a few bytes written at once (the lock, the tail: prepared before) or a
    simple query, which the server reads whole under that limit before it runs it (the rows,
    whose hundreds of kilobytes may be cut off anywhere)."""
    tail_of = await conn.prepare(S.audit_tail)
    await conn.execute(_TAKE_LOCK, lock)
    tail = await tail_of.fetchrow()
    await conn.execute(_rows_in(link_entries(keys, tail, [audit_entry(e) for e in entries], now)))


def _rows_in(rows: list[tuple[object, ...]]) -> str:
    """``INSERT_AUDIT_ROWS`` of the linked ``rows``, with them as a literal (a simple query)."""
    linked = literal(msgspec.json.encode(rows).decode())
    return INSERT_AUDIT_ROWS.replace("$1::json", f"{linked}::json")


class AuditLinker:
    """Links a database's pending audit rows into its chain (see the module docstring).
    ``pool`` gives the store's pool; ``keys`` gives the keys that chain the rows, asked at each
    pass (a node that takes up a rotated ring chains with its new key from then on); ``lock``
    is the audit lock."""

    def __init__(
        self,
        pool: Callable[[], FairPool],
        keys: Callable[[], ChainKeys],
        lock: int,
    ) -> None:
        self._pool, self._keys, self._lock = pool, keys, lock
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._turn = asyncio.Lock()  # one pass of this node at a time
        self._running = False  # between start and stop: the store is open

    def start(self) -> None:
        """Run passes from now on (the store has opened): rows a killed node left pending are
        linked by the idle pass even if no request ever reaches this one."""
        self._running = True
        self._keep_running()

    def wake(self) -> None:
        """Rows were written: link them soon."""
        self._wanted.set()
        self._keep_running()

    def _keep_running(self) -> None:
        # Never after stop: a write that commits while the store closes would start a task
        # that outlives the pool, failing every second for good. Its rows stay pending,
        # committed, for the next pass of any node.
        if self._running and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def link_all(self) -> None:
        """Link every row pending now (every node's), one pass of this node at a time, if the
        audit lock is free. :class:`ChainBusy` when another session holds it (a linker links
        what had committed when it took the lock; the rest waits for a pass)."""
        async with self._turn:
            await self._link(None)

    async def link_for_reader(self) -> None:
        """Link what is pending before the trail is read (``audit show``, ``verify``,
        ``export``): it waits up to :data:`READER_WAIT_SECONDS` for whoever holds the chain,
        then fails in one line rather than with the command timeout's traceback. Not in this
        node's turn, so nothing of this node's adds to that bound (the lock alone orders the
        reader and this node's passes)."""
        await self._link(READER_WAIT_SECONDS)

    async def _link(self, wait: float | None) -> None:
        """``wait``: seconds to wait for the audit lock, None to take it only if it is free;
        ChainBusy past them."""
        while await self._link_once(wait):
            pass

    async def stop(self) -> None:
        """Stop the task, then link what is pending, if the database answers and nobody holds
        the audit lock (otherwise the next pass of any node links it): a node asked to stop
        never waits, up to the command timeout, for whoever holds the chain."""
        self._running = False
        task, self._task = self._task, None
        await cancel(task)
        if task is not None:
            with contextlib.suppress(ChainBusy, *CONNECTION_ERRORS):
                await self.link_all()

    async def _run(self) -> None:
        busy = 0.0  # how long to wait before trying a held lock again
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_SECONDS):
                    await self._wanted.wait()
            await asyncio.sleep(GATHER_SECONDS)
            self._wanted.clear()
            try:
                await self.link_all()
                busy = 0.0
            except ChainBusy:
                # Tried again soon, then less often while it stays held; no pooled connection
                # waits on the lock meanwhile (with a pool of one, every request would).
                busy = min(2 * busy or BUSY_SECONDS, IDLE_SECONDS)
                await asyncio.sleep(busy)
                self._wanted.set()
            except _PASS_ERRORS as exc:
                # The rows stay pending, committed; this or another node links them later.
                log.warning("linking audit rows failed: %s", str(exc) or type(exc).__name__)
                await asyncio.sleep(IDLE_SECONDS)
            except Exception:
                # A fault of this code, not the database's: logged with its trace, and the
                # passes go on (ended, the idle ones would stop until this node writes again).
                log.exception("linking audit rows failed")
                await asyncio.sleep(IDLE_SECONDS)

    async def _link_once(self, wait: float | None) -> bool:
        """One pass: read what is pending and the chain's tail without the lock, link it, then
        take the lock, check nothing moved, write and commit in one round trip. The lock is
        held only while the server runs that one query: never while it waits on this node,
        which may be frozen or cut off at any point (docs/rules.md, "The audit trail").
        Whether it read a full batch (more may be pending)."""
        pool = self._pool()
        deadline = None if wait is None else asyncio.get_running_loop().time() + wait
        upto, full = _EVERY_SEQ, False
        while True:
            taken = await pool.fetch(_READ_PENDING, BATCH, upto)
            if not taken:
                return full  # this pass's rows were linked by a linker that went first
            full = full or len(taken) == BATCH
            tail = await pool.fetchrow(S.audit_tail)
            made = [(float(r[1]), _entry(r)) for r in taken]
            rows = link_made(self._keys(), tail, made)
            seqs = [int(r[0]) for r in taken]
            query = _commit_linked(self._lock, _left(deadline), tail, seqs, rows)
            async with committing(pool) as conn:
                try:
                    await conn.execute(query)
                    return full
                except asyncpg.InvalidTextRepresentationError as exc:
                    if _BUSY in str(exc):
                        raise ChainBusy from None
                    if _MOVED not in str(exc):
                        raise
                except asyncpg.LockNotAvailableError:
                    raise ChainBusy from None
            # Another linker (or an import) went first. Read again only up to the rows read
            # here: the others link rows in the order they were written, so the rows this pass
            # is for leave pending soon, and it ends, however often the chain moves under it
            # (a reader far from the database, whose round trips each take longer than a
            # node's pass, would otherwise read again until its wait ran out).
            upto = seqs[-1]


class ChainBusy(StoreError):
    """Another session holds the audit chain's lock, so pending rows were not linked."""

    def __init__(self) -> None:
        super().__init__(
            "audit rows wait to be linked and another session holds the audit chain's lock"
            " (an advisory lock, in pg_locks): try again"
        )


def _left(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (at least a millisecond), None for none."""
    if deadline is None:
        return None
    return max(deadline - asyncio.get_running_loop().time(), 0.001)


def _commit_linked(
    lock: int,
    wait: float | None,
    tail: asyncpg.Record | None,
    seqs: list[int],
    rows: list[tuple[object, ...]],
) -> str:
    """One simple query: BEGIN; the audit ``lock`` (``wait`` seconds at most, LockNotAvailable
    past them; None: only if it is free, failing with ``_BUSY`` otherwise); the chain's tail
    still ``tail`` and every row ``seqs`` still pending (failing with ``_MOVED`` otherwise);
    the linked ``rows`` in, the pending ones out; COMMIT."""
    if wait is None:
        take = "SELECT " + fails_unless(f"pg_try_advisory_xact_lock({lock})", _BUSY)
    else:
        ms = max(int(wait * 1000), 1)
        take = f"SET LOCAL lock_timeout = {ms}; SELECT pg_advisory_xact_lock({lock})"
    last = "NULL" if tail is None else str(int(tail[0]))
    still = "SELECT " + fails_unless(f"({_TAIL_ID}) IS NOT DISTINCT FROM {last}", _MOVED)
    listed = "{" + ",".join(map(str, seqs)) + "}"
    taken = (
        f"WITH taken AS (DELETE FROM audit_pending WHERE seq = ANY('{listed}'::bigint[])"
        f" RETURNING 1) SELECT {fails_unless(f'count(*) = {len(seqs)}', _MOVED)} FROM taken"
    )
    return "; ".join(["BEGIN", take, still, taken, _rows_in(rows), "COMMIT"])


def _entry(row: asyncpg.Record) -> AuditEntry:
    return AuditEntry(
        action=row[2],
        actor_id=row[3],
        target_id=row[4],
        target_name=row[5],
        source=row[6],
        detail=row[7],
    )
