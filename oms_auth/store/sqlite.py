"""The embedded default store: SQLite, WAL mode, one writer with group commit.

Writes are jobs of the single writer (:mod:`.sqlite_writer`): a thread of its own on the
standard library's sqlite3, running every job queued at that moment in one transaction, each in
its own SAVEPOINT, committed once. Reads by key (a user, a session: a few rows through an index)
run on the event loop on a read-only connection of its own, which costs less than a trip to a
thread and back; other reads (lists, counts over a table) use a connection through aiosqlite.
WAL lets both run beside a write.

Rules under concurrency: every write is a job of the single writer, so a job's reads and writes
(count-then-insert of a limit, redeeming a code, reading the audit chain's tail and appending)
run with nothing in between. The decisions are in :mod:`.plans` (shared with PostgreSQL), the
statements in :mod:`.sql`; what a job uses inside its transaction in :mod:`.sqlite_tx`, the schema
in :mod:`.sqlite_schema` and :mod:`.sqlite_migrate`.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from ..files import create_private, probe_write, tighten_path
from . import keys, plans
from . import sql as q
from . import sqlite_tx as tx
from .audit import ChainKeys, checked_audit_key
from .base import Store
from .plans import AccountState, LoginState, ResetState
from .records import (
    RESET_FAILURE,
    AccountChange,
    Admission,
    ApiKey,
    AuditEntry,
    Authority,
    Claim,
    CodeIssue,
    Imported,
    ImportItem,
    MailState,
    NewUser,
    OutboxRow,
    Outcome,
    PasswordReset,
    PendingStep,
    ResetCode,
    Room,
    SessionOpening,
    Slot,
    StoreError,
    UsernameConfusable,
    UsernameTaken,
    username_key,
    username_skeleton,
)
from .sealed import SealedColumn, reseal_sql
from .sqlite_backup import SERVE_LOCK
from .sqlite_devices import SqliteDevices
from .sqlite_migrate import migrate
from .sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from .sqlite_tx import S
from .sqlite_writer import Writer

__all__ = ["SqliteStore", "SCHEMA_VERSION", "MIGRATIONS"]

T = TypeVar("T")
R = TypeVar("R")


class _RolledBack(Exception):
    """Raised by the health probe's write job, so the writer rolls its write back."""


_LOOKALIKE = "the username looks too much like an existing username"

# What only this store runs (its dialect's way of saying it).
_CLAIM_MAIL = (
    "UPDATE outbox SET due_at = ?, attempts = attempts + 1, claimed = 1"
    " WHERE id IN (SELECT id FROM outbox"
    f" WHERE state = '{MailState.QUEUED}' AND due_at <= ? ORDER BY id LIMIT ?)"
    " RETURNING " + ", ".join(q.OUTBOX_COLUMNS)
)
_TOUCH_SESSION = "UPDATE sessions SET last_seen = max(last_seen, ?) WHERE digest = ?"


class SqliteStore(SqliteDevices, Store):
    """SQLite at ``path``, created on first use."""

    imports_in_order = True  # the single writer, each batch a job alone

    def __init__(
        self,
        path: str,
        *,
        audit_key: bytes | ChainKeys,
        key: keys.KeyBinding | None = None,
        max_batch: int = 256,
    ) -> None:
        self.path = path
        self._audit_key = checked_audit_key(audit_key)
        self._key = key  # None: opened without checking the service key (tests, tools)
        self._max_batch = max_batch
        self._w: Writer | None = None
        self._r: aiosqlite.Connection | None = None
        self._k: sqlite3.Connection | None = None  # reads by key, on the event loop
        self._serving: int | None = None  # the descriptor holding the serve lock

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (creating the file when missing), check the service key, migrate. StoreError
        with one line when the store cannot be used; nothing is left open then."""
        try:
            self._prepare_files()
            # The reader migrates, before it turns read-only and the writer starts.
            self._r = await self._connect()
            await self._r.execute("PRAGMA journal_mode=WAL")
            await migrate(self._r, self.path, self._audit_key, self._key)
            await self._r.execute("PRAGMA query_only=ON")
            self._k = tx.connect(self.path, keyed=True)
            # Kept before it starts, so a start that fails is still closed (its thread too).
            self._w = Writer(functools.partial(tx.connect, self.path), self._max_batch)
            await self._w.start()
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open the store {self.path}: {exc}") from None
        except BaseException:
            await self.close()
            raise

    def _prepare_files(self) -> None:
        """Files before SQLite touches them (docs/operations.md, "Files on disk"). The store is
        created here,
        0600: SQLite would make it 0644 less the umask, and gives its -wal and -shm the store's
        mode. Looser files, a crash's -wal and -shm included, are tightened. The folder must take
        new files: SQLite creates the -wal and -shm there on every open."""
        folder = Path(self.path).resolve().parent
        try:
            probe_write(folder, f".{Path(self.path).name}.probe-")
        except OSError as exc:
            raise StoreError(
                f"cannot use the store {self.path}: its folder {folder} is read-only or full"
                f" ({exc.strerror or exc}); SQLite creates the -wal and -shm files there"
            ) from None
        try:
            create_private(self.path)
        except OSError as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc.strerror or exc}") from None
        for suffix in ("-wal", "-shm"):
            tighten_path(self.path + suffix)

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: we issue BEGIN ourselves, so sqlite3 never opens one implicitly.
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in tx.PRAGMAS:
                await db.execute("PRAGMA " + pragma)
        except BaseException:
            await db.close()  # its thread would keep the process alive
            raise
        return db

    async def start_serving(self, now: float) -> int:
        # An exclusive lock beside the store, held while this process serves: a second serve
        # on the same file is refused, so claims found now can only be a dead process's.
        lock = self.path + SERVE_LOCK
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create {lock}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"another oms-auth serve is using {self.path} (it holds {lock})"
            ) from None
        self._serving = fd
        return await self.reclaim_mail(now)

    async def close(self) -> None:
        if self._serving is not None:
            os.close(self._serving)  # releases the lock
            self._serving = None
        if self._w is not None:
            await self._w.close()  # queued writes finish first: a caller awaits them
            self._w = None
        if self._r is not None:
            await self._r.close()
            self._r = None
        if self._k is not None:
            self._k.close()
            self._k = None

    async def writable(self) -> str | None:
        # A rolled-back write never reaches the disk (and the WAL reuses its space), so it
        # shows a store that refuses writes (read-only, locked, broken) but not a full disk:
        # a page written beside the store shows that.
        token = secrets.token_hex(8)

        def job(raw: sqlite3.Connection) -> None:
            raw.execute("INSERT INTO meta (key, value) VALUES (?, '')", ("healthz:" + token,))
            raise _RolledBack

        try:
            async with asyncio.timeout(5):
                await self._write(job)
        except _RolledBack:
            pass
        except TimeoutError:
            return "the store took no write within 5 s"
        except (sqlite3.Error, StoreError) as exc:
            return f"the store takes no write: {exc}"
        folder = Path(self.path).resolve().parent
        try:
            await asyncio.to_thread(probe_write, folder, f".{Path(self.path).name}.probe-")
        except OSError as exc:
            return f"the store's folder takes no write: {exc.strerror or exc}"
        return None

    @property
    def _reader(self) -> aiosqlite.Connection:
        if self._r is None:
            raise StoreError("store is not open")
        return self._r

    # -- plumbing -----------------------------------------------------------------------------

    _sql = S

    async def _fetch(self, statement: str, args: tuple[object, ...]) -> list[Any]:
        # One trip to the reader's thread per query (execute, fetch and close would be three).
        return list(await self._reader.execute_fetchall(statement, args))

    async def _by_key(self, statement: str, args: tuple[object, ...]) -> list[Any]:
        # On the event loop: a read by key costs it less than the trip to the reader's thread
        # and back (docs/performance.md, "Reads by key on the event loop"). In WAL mode the
        # writer never blocks a reader.
        if self._k is None:
            raise StoreError("store is not open")
        return self._k.execute(statement, args).fetchall()

    async def _write(self, job: Callable[[sqlite3.Connection], T], *, alone: bool = False) -> T:
        """Run a write job in the writer's next batch, or in a transaction of its own when
        ``alone`` (see :mod:`.sqlite_writer`)."""
        if self._w is None:
            raise StoreError("store is not open")
        return await self._w.write(job, alone=alone)

    # -- users --------------------------------------------------------------------------------

    async def create_user(
        self,
        user: NewUser,
        audit: AuditEntry | None = None,
        *,
        authority: Authority | None = None,
    ) -> int:
        def job(raw: sqlite3.Connection) -> int:
            tx.authorize(raw, authority)
            key = username_key(user.username)
            if raw.execute(S.username_taken, (key,)).fetchone():
                raise UsernameTaken(f"username {user.username.strip()!r} is taken")
            skeleton = username_skeleton(user.username)
            if raw.execute(S.username_lookalike, (skeleton, key)).fetchone():
                raise UsernameConfusable(_LOOKALIKE)
            user_id = tx.insert_user(raw, user)
            if audit is not None:
                entry = msgspec.structs.replace(audit, target_id=user_id)
                tx.append_audit(raw, self._audit_key, [entry], tx.clock(raw))
            return int(user_id)

        return await self._write(job)

    async def import_users(self, batch: Sequence[ImportItem]) -> list[tuple[Imported, int | None]]:
        made = tx.import_args(batch)  # here: the writer's thread is the one to spare

        def job(raw: sqlite3.Connection) -> list[tuple[Imported, int | None]]:
            written = tx.import_batch(raw, batch, made)
            tx.append_audit(raw, self._audit_key, written.audit, tx.clock(raw))
            return written.outcomes

        return await self._write(job, alone=True)

    async def set_totp(self, user_id: int, sealed: bytes | None) -> None:
        def job(raw: sqlite3.Connection) -> None:
            raw.execute(S.set_totp, (sealed, user_id))

        await self._write(job)

    async def replace_hash(self, user_id: int, verified: str, replacement: str) -> None:
        def job(raw: sqlite3.Connection) -> None:
            raw.execute(S.rehash_password, (replacement, user_id, verified))

        await self._write(job)

    async def change_account(self, change: AccountChange, now: float) -> Outcome:
        def job(raw: sqlite3.Connection) -> Outcome:
            tx.authorize(raw, change.authority)
            state = tx.read_state(raw, AccountState, S.account_state, change.user_id)
            outcome = tx.run_plan(raw, plans.account_plan(S, change, state, now))
            if outcome is Outcome.DONE:
                tx.append_audit(raw, self._audit_key, [change.audit], now)
            return outcome

        return await self._write(job)

    async def set_lock(
        self,
        user_id: int,
        until: float | None,
        audit: AuditEntry,
        *,
        authority: Authority | None = None,
    ) -> None:
        def job(raw: sqlite3.Connection) -> None:
            tx.authorize(raw, authority)
            raw.execute(S.set_lock, (until, user_id))
            if until is None:
                raw.execute(S.clear_events, (RESET_FAILURE, str(user_id)))
            tx.append_audit(raw, self._audit_key, [audit], tx.clock(raw))

        await self._write(job)

    async def lock_when_spent(
        self, user_id: int, claim: Claim, now: float, until: float, audit: AuditEntry
    ) -> bool:
        def job(raw: sqlite3.Connection) -> bool:
            # In the single writer: a reset that clears the count commits before or after
            # this, never between the count and the lock.
            row = raw.execute(S.locked_until, (user_id,)).fetchone()
            locked_until = row[0] if row is not None else None
            count = tx.count(raw, claim, now)
            if not plans.lock_due(locked_until, row is not None, count, claim, now):
                return False
            raw.execute(S.set_lock, (until, user_id))
            tx.append_audit(raw, self._audit_key, [audit], now)
            return True

        return await self._write(job)

    # -- sessions -----------------------------------------------------------------------------

    async def open_session(self, opening: SessionOpening) -> Outcome:
        def job(raw: sqlite3.Connection) -> Outcome:
            # The single writer orders this against a reset's transaction: either the reset
            # came first (the version moved on: STALE) or it deletes this session.
            state = tx.read_state(raw, LoginState, S.login_state, opening.user_id)
            for slot in opening.release:
                raw.execute(tx.RELEASE_EVENT, slot)
            outcome = tx.run_plan(raw, plans.session_plan(S, opening, state))
            if outcome is Outcome.DONE and opening.audit:
                tx.append_audit(raw, self._audit_key, opening.audit, opening.now)
            return outcome

        return await self._write(job)

    async def begin_second_step(
        self, digest: bytes, user_id: int, password_version: int, now: float
    ) -> None:
        def job(raw: sqlite3.Connection) -> None:
            raw.execute(S.insert_pending_login, (digest, user_id, password_version, now))

        await self._write(job)

    async def second_step_attempt(
        self, digest: bytes, now: float, max_age: float, max_attempts: int
    ) -> PendingStep | None:
        def job(raw: sqlite3.Connection) -> PendingStep | None:
            args = (digest, max_attempts, now - max_age)
            row = raw.execute(S.pending_login_attempt, args).fetchone()
            if row is None:
                raw.execute(S.delete_pending_login, (digest,))
                return None
            return PendingStep(int(row[0]), int(row[1]))

        return await self._write(job)

    async def end_second_step(self, digest: bytes) -> None:
        def job(raw: sqlite3.Connection) -> None:
            raw.execute(S.delete_pending_login, (digest,))

        await self._write(job)

    async def touch_session(self, digest: bytes, now: float) -> bool:
        def job(raw: sqlite3.Connection) -> bool:
            cur = raw.execute(_TOUCH_SESSION, (now, digest))
            return cur.rowcount == 1

        return await self._write(job)

    async def revoke_session(self, digest: bytes, user_id: int, reason: str) -> None:
        def job(raw: sqlite3.Connection) -> None:
            raw.execute(S.delete_session, (digest,))

        await self._write(job)

    # -- API keys -----------------------------------------------------------------------------

    async def add_api_key(
        self,
        key: ApiKey,
        max_keys: int,
        audit: AuditEntry,
        *,
        authority: Authority | None = None,
    ) -> bool:
        def job(raw: sqlite3.Connection) -> bool:
            # In the single writer: a reset revoking this user's keys commits before this
            # (then the authority is gone) or after it (then it deletes this key too).
            tx.authorize(raw, authority)
            (held,) = raw.execute(S.count_user_api_keys, (key.user_id,)).fetchone()
            if held >= max_keys:
                return False
            raw.execute(S.insert_api_key, q.api_key_args(key))
            tx.append_audit(raw, self._audit_key, [audit], key.created_at)
            return True

        return await self._write(job)

    async def remove_api_key(
        self,
        user_id: int,
        key: str,
        reason: str,
        audit: AuditEntry,
        *,
        authority: Authority | None = None,
    ) -> list[bytes] | None:
        def job(raw: sqlite3.Connection) -> list[bytes] | None:
            tx.authorize(raw, authority)
            sessions = raw.execute(S.delete_api_key_sessions, (key, user_id)).fetchall()
            cur = raw.execute(S.delete_api_key, (key, user_id))
            if cur.rowcount != 1:  # not this user's key: no session of it was either
                return None
            tx.append_audit(raw, self._audit_key, [audit], tx.clock(raw))
            return [bytes(row[0]) for row in sessions]

        return await self._write(job)

    # -- counted events -----------------------------------------------------------------------

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[int] | None:
        def job(raw: sqlite3.Connection) -> list[int] | None:
            # Counted and recorded in one job of the single writer: nothing runs in between.
            counts = [tx.count(raw, c, now) for c in claims]
            if not plans.room_left(claims, counts):
                return None
            tx.record(raw, claims, now)
            return counts

        return await self._write(job)

    async def admit(self, claims: Sequence[Claim], now: float) -> Admission:
        def job(raw: sqlite3.Connection) -> Admission:
            # Counted and recorded in one job of the single writer, as reserve's.
            admission = plans.admission(claims, [tx.attempts(raw, c, now) for c in claims])
            if admission.room is Room.FREE:
                raw.executemany(S.insert_attempt, [(c.kind, c.key, now) for c in claims])
            return admission

        return await self._write(job)

    async def settle(self, slots: Sequence[Slot]) -> None:
        await self._write(functools.partial(tx.settle, slots=slots))

    async def release(self, kind: str, key: str, at: float) -> None:
        def job(raw: sqlite3.Connection) -> None:
            raw.execute(tx.RELEASE_EVENT, (kind, key, at))

        await self._write(job)

    async def prune(self, events_before: float, sessions_idle_since: float) -> int:
        def job(raw: sqlite3.Connection) -> int:
            gone = 0
            for statement, args in q.prune_plan(S, events_before, sessions_idle_since):
                cur = raw.execute(statement, args)
                gone += max(cur.rowcount, 0)
            return gone

        return await self._write(job)

    # -- reset codes --------------------------------------------------------------------------

    async def issue_code(self, issue: CodeIssue) -> bool:
        def job(raw: sqlite3.Connection) -> bool:
            tx.authorize(raw, issue.authority)
            if tx.run_plan(raw, plans.issue_plan(S, issue)) is not Outcome.DONE:
                return False
            tx.append_audit(raw, self._audit_key, issue.audit, issue.now)
            return True

        return await self._write(job)

    async def check_code(
        self,
        digest: bytes | None,
        user_id: int | None,
        now: float,
        invalid: Claim,
        attempt: Claim | None = None,
    ) -> tuple[Outcome, ResetCode | None]:
        def job(raw: sqlite3.Connection) -> tuple[Outcome, ResetCode | None]:
            invalid_count = tx.count(raw, invalid, now)
            row = None
            if digest is not None and not plans.throttled(invalid_count, invalid):
                row = raw.execute(S.live_code, q.live_code_args(digest, now, user_id)).fetchone()
            found = plans.CodeCheck(
                invalid_count,
                q.to_code(row) if row is not None else None,
                tx.count(raw, attempt, now) if attempt is not None else 0,
            )
            outcome, counted = plans.code_check(found, invalid, attempt)
            tx.record(raw, counted, now)
            return outcome, found.code if outcome is Outcome.DONE else None

        return await self._write(job)

    async def complete_reset(self, reset: PasswordReset) -> Outcome:
        def job(raw: sqlite3.Connection) -> Outcome:
            state = tx.read_state(raw, ResetState, S.reset_state, reset.user_id)
            held = raw.execute(S.questions, (reset.user_id,)).fetchall()
            plan = plans.reset_plan(S, reset, state, [(r[1], r[2]) for r in held])
            outcome = tx.run_plan(raw, plan)
            if outcome is Outcome.DONE:
                tx.append_audit(raw, self._audit_key, [*reset.audit, *plan.audit], reset.now)
            return outcome

        return await self._write(job)

    # -- mail outbox --------------------------------------------------------------------------

    async def claim_mail(self, now: float, lease: float, limit: int) -> list[OutboxRow]:
        def job(raw: sqlite3.Connection) -> list[OutboxRow]:
            # One statement: attempts come back as the claim left them, as on PostgreSQL.
            rows = raw.execute(_CLAIM_MAIL, (now + lease, now, limit)).fetchall()
            return sorted((q.to_outbox(r) for r in rows), key=lambda row: row.id)

        return await self._write(job)

    async def reclaim_mail(self, now: float) -> int:
        def job(raw: sqlite3.Connection) -> int:
            cur = raw.execute(S.reclaim_mail, (now,))
            return max(cur.rowcount, 0)

        return await self._write(job)

    async def hand_back_mail(self, mail_ids: Sequence[int], now: float) -> None:
        def job(raw: sqlite3.Connection) -> None:
            raw.executemany(S.hand_back_mail, [(now, mail_id) for mail_id in mail_ids])

        await self._write(job)

    async def mails_delivered(
        self, mail_ids: Sequence[int], now: float, audit: Sequence[AuditEntry] = ()
    ) -> None:
        def job(raw: sqlite3.Connection) -> None:
            raw.executemany(S.mail_sent, [(now, mail_id) for mail_id in mail_ids])
            if audit:
                tx.append_audit(raw, self._audit_key, audit, now)

        await self._write(job)

    async def mail_failed(
        self, mail_id: int, now: float, error: str, retry_at: float | None
    ) -> None:
        def job(raw: sqlite3.Connection) -> None:
            if retry_at is None:
                raw.execute(S.mail_given_up, (error, mail_id))
            else:
                raw.execute(S.mail_retry, (retry_at, error, mail_id))

        await self._write(job)

    # -- audit --------------------------------------------------------------------------------

    async def reseal(self, column: SealedColumn, pk: object, old: bytes, new: bytes) -> bool:
        def job(raw: sqlite3.Connection) -> bool:
            return raw.execute(reseal_sql(column), (new, old, pk)).rowcount == 1

        return await self._write(job)

    async def take_key(self, binding: keys.KeyBinding, audit_key: ChainKeys) -> bool:
        chain = checked_audit_key(audit_key)

        def job(raw: sqlite3.Connection) -> bool:
            stored = {str(k): str(v) for k, v in raw.execute(keys.ADVANCE_READ)}
            steps = keys.advance_plan(binding, stored)
            if steps is None:
                return False
            for statement, args in steps:
                raw.execute(statement, args)
            self._audit_key = chain  # the writer's next job chains with it
            return True

        return await self._write(job)

    async def audit(self, entries: list[AuditEntry], now: float) -> None:
        def job(raw: sqlite3.Connection) -> None:
            tx.append_audit(raw, self._audit_key, entries, now)

        await self._write(job)
