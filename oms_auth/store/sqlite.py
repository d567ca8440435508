"""The embedded default store: SQLite through aiosqlite, WAL mode, group commit.

Writes go through one writer task. It takes every write job queued at that moment and runs them
in one transaction, each inside its own SAVEPOINT (so one job's failure undoes only that job),
then commits once: under load many requests share one fsync, and every caller still returns only
after its own effect is committed. Reads use a second connection; WAL lets them run beside a
write.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite
import msgspec

from .base import (
    RESET_FAILURE,
    AuditEntry,
    AuditRow,
    Claim,
    MailItem,
    NewUser,
    OutboxRow,
    Outcome,
    ResetCode,
    SecurityQuestion,
    Session,
    Store,
    StoreError,
    User,
    chain_hash,
    checked_audit_key,
    username_key,
)

__all__ = ["SqliteStore", "SCHEMA_VERSION"]

T = TypeVar("T")
Job = Callable[[aiosqlite.Connection], Awaitable[Any]]

# Each entry migrates from version (index) to version (index + 1). Append; never edit.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        username_key TEXT NOT NULL UNIQUE,
        email TEXT NOT NULL,
        email_verified INTEGER NOT NULL DEFAULT 0,
        oms_id INTEGER NOT NULL,
        account_id INTEGER,
        password_hash TEXT NOT NULL,
        totp_sealed BLOB,
        auth_source TEXT NOT NULL DEFAULT 'native',
        active INTEGER NOT NULL DEFAULT 1,
        master INTEGER NOT NULL DEFAULT 0,
        last_login REAL,
        locked_until REAL,
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    );
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        oms_id INTEGER NOT NULL
    );
    CREATE TABLE user_accounts (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        PRIMARY KEY (user_id, account_id)
    );
    CREATE INDEX user_accounts_by_account ON user_accounts(account_id);
    CREATE TABLE user_permissions (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        permission TEXT NOT NULL,
        PRIMARY KEY (user_id, permission)
    );
    CREATE TABLE security_questions (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        question TEXT NOT NULL,
        answer_hash TEXT NOT NULL
    );
    CREATE TABLE sessions (
        digest BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE INDEX sessions_by_user ON sessions(user_id);
    CREATE TABLE events (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX events_by_key ON events(kind, key, at);
    CREATE TABLE reset_codes (
        digest BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
    );
    CREATE INDEX reset_codes_by_user ON reset_codes(user_id, state);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        recipient TEXT NOT NULL,
        user_id INTEGER,
        public TEXT NOT NULL,
        sealed BLOB,
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        due_at REAL NOT NULL,
        last_error TEXT,
        sent_at REAL
    );
    CREATE INDEX outbox_due ON outbox(state, due_at);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        actor_id INTEGER,
        target_id INTEGER,
        target_name TEXT,
        source TEXT,
        detail TEXT
    );
    CREATE INDEX audit_by_target ON audit(target_id);
    """,
    # 2: the audit trail becomes a hash chain (rows written before are chained by _chain_audit).
    """
    ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT '';
    CREATE INDEX audit_by_time ON audit(at);
    """,
    # 3: rules that hold under concurrency (SPEC section 4). A password version, so a session is
    # only created for the password its check read; the last TOTP time step accepted, so a code
    # is never accepted twice; pending second login steps, counted and bounded in the store. The
    # audit chain is re-computed keyed with the service key (_chain_audit).
    """
    ALTER TABLE users ADD COLUMN password_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN totp_last_step INTEGER;
    CREATE TABLE pending_logins (
        digest BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        password_version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX pending_logins_by_user ON pending_logins(user_id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_SEP = "\x1f"
_USER_COLUMNS = f"""
    u.id, u.username, u.email, u.email_verified, u.oms_id, u.account_id, u.password_hash,
    u.totp_sealed, u.auth_source, u.active, u.master, u.last_login, u.locked_until,
    (SELECT group_concat(permission, '{_SEP}') FROM user_permissions p WHERE p.user_id = u.id),
    (SELECT group_concat(account_id, '{_SEP}') FROM user_accounts a WHERE a.user_id = u.id),
    u.password_version, u.totp_last_step
"""
_AUDIT_COLUMNS = "id, at, action, actor_id, target_id, target_name, source, detail, prev_hash, hash"
_json = msgspec.json.Encoder()
# (statement, which bound it takes): what prune() deletes.
_PRUNE: list[tuple[str, Callable[[float, float], float]]] = [
    ("DELETE FROM events WHERE at < ?", lambda events, sessions: events),
    ("DELETE FROM sessions WHERE last_seen < ?", lambda events, sessions: sessions),
    ("DELETE FROM pending_logins WHERE created_at < ?", lambda events, sessions: sessions),
    (
        "DELETE FROM reset_codes WHERE (state != 'pending' OR expires_at < ?1) AND created_at < ?1",
        lambda events, sessions: events,
    ),
]


def _user(row: sqlite3.Row | tuple[Any, ...]) -> User:
    perms, accounts = row[13], row[14]
    return User(
        id=row[0],
        username=row[1],
        email=row[2],
        email_verified=bool(row[3]),
        oms_id=row[4],
        account_id=row[5],
        password_hash=row[6],
        totp_sealed=row[7],
        auth_source=row[8],
        active=bool(row[9]),
        master=bool(row[10]),
        last_login=row[11],
        locked_until=row[12],
        permissions=frozenset(perms.split(_SEP)) if perms else frozenset(),
        accounts=frozenset(int(a) for a in accounts.split(_SEP)) if accounts else frozenset(),
        password_version=row[15],
        totp_last_step=row[16],
    )


class SqliteStore(Store):
    """SQLite at ``path``, created on first use."""

    def __init__(self, path: str, *, audit_key: bytes, max_batch: int = 256) -> None:
        self.path = path
        self._audit_key = checked_audit_key(audit_key)
        self._max_batch = max_batch
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # how many commits the writer made (the group-commit benchmark reads it)

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self._w = await self._connect()
        await self._w.execute("PRAGMA journal_mode=WAL")
        await self._migrate(self._w)
        self._r = await self._connect()
        await self._r.execute("PRAGMA query_only=ON")
        self._writer = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: we issue BEGIN ourselves, so sqlite3 never opens one implicitly.
        db = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in (
            "busy_timeout=10000",
            "foreign_keys=ON",
            # FULL: a commit is on disk before the caller is told so, power loss included.
            "synchronous=FULL",
            # Erased secrets (delivered mail, voided codes) are overwritten, not just unlinked.
            "secure_delete=ON",
        ):
            await db.execute("PRAGMA " + pragma)
        return db

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = await self._one(db, "PRAGMA user_version")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema version {version}; "
                    f"this oms-auth knows up to {SCHEMA_VERSION}"
                )
            for target in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        await db.execute(statement)
                # 2 chained the rows written before it; 3 re-chains them keyed (idempotent).
                if target + 1 in (2, 3):
                    await self._chain_audit(db)
                await db.execute(f"PRAGMA user_version={target + 1}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._writer is not None:
            # Let queued writes finish: what a caller awaits must not be dropped.
            while not self._queue.empty():
                await asyncio.sleep(0.01)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        for db in (self._r, self._w):
            if db is not None:
                await db.close()
        self._r = self._w = None

    async def healthy(self) -> bool:
        try:
            return bool(await self._one(self._reader, "SELECT 1") == (1,))
        except (sqlite3.Error, ValueError):
            return False

    @property
    def _reader(self) -> aiosqlite.Connection:
        if self._r is None:
            raise StoreError("store is not open")
        return self._r

    # -- plumbing -----------------------------------------------------------------------------

    # One trip to the connection's thread per query (execute, fetch and close would be three).
    @staticmethod
    async def _one(db: aiosqlite.Connection, sql: str, params: Any = ()) -> Any:
        rows = list(await db.execute_fetchall(sql, params))
        return rows[0] if rows else None

    @staticmethod
    async def _all(db: aiosqlite.Connection, sql: str, params: Any = ()) -> list[Any]:
        return list(await db.execute_fetchall(sql, params))

    async def _write(self, job: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        if self._writer is None:
            raise StoreError("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        # shield: a caller that is cancelled must not leave the batch without its answer.
        return await asyncio.shield(future)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self._max_batch:
                batch.append(self._queue.get_nowait())
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        db = self._w
        assert db is not None
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            await db.execute("BEGIN IMMEDIATE")
            for job, future in batch:
                await db.execute("SAVEPOINT job")
                try:
                    result = await job(db)
                except Exception as exc:
                    await db.execute("ROLLBACK TO job")
                    await db.execute("RELEASE job")
                    outcomes.append((future, None, exc))
                else:
                    await db.execute("RELEASE job")
                    outcomes.append((future, result, None))
            await db.execute("COMMIT")
            self.batches += 1
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                await db.execute("ROLLBACK")
            outcomes = [(future, None, exc) for _, future in batch]
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    async def _insert_audit(
        self, db: aiosqlite.Connection, entries: list[AuditEntry], now: float
    ) -> None:
        # Inside the write transaction, so the chain's tail cannot move under us.
        last = await SqliteStore._one(db, "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
        last_id, prev = (last[0], last[1]) if last else (0, "")
        rows = []
        for n, e in enumerate(entries, start=last_id + 1):
            fields = (n, now, e.action, e.actor_id, e.target_id, e.target_name, e.source, e.detail)
            digest = chain_hash(self._audit_key, prev, *fields)
            rows.append((*fields, prev, digest))
            prev = digest
        await db.executemany(
            "INSERT INTO audit (id, at, action, actor_id, target_id, target_name, source, detail,"
            " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    async def _chain_audit(self, db: aiosqlite.Connection) -> None:
        """(Re-)chain every row under the audit key, in id order (a migration step)."""
        prev = ""
        for row in await SqliteStore._all(db, f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id"):
            digest = chain_hash(self._audit_key, prev, *row[:8])
            await db.execute(
                "UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev, digest, row[0])
            )
            prev = digest

    @staticmethod
    async def _insert_mail(db: aiosqlite.Connection, mail: MailItem, now: float) -> None:
        await db.execute(
            "INSERT INTO outbox (kind, recipient, user_id, public, sealed, created_at, due_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                mail.kind,
                mail.recipient,
                mail.user_id,
                _json.encode(mail.public).decode(),
                mail.sealed,
                now,
                now,
            ),
        )

    # -- users --------------------------------------------------------------------------------

    async def create_user(self, user: NewUser, audit: AuditEntry | None = None) -> int:
        async def job(db: aiosqlite.Connection) -> int:
            key = username_key(user.username)
            if await self._one(db, "SELECT 1 FROM users WHERE username_key = ?", (key,)):
                raise StoreError(f"username {user.username.strip()!r} is taken")
            cur = await db.execute(
                "INSERT INTO users (username, username_key, email, email_verified, oms_id,"
                " account_id, password_hash, auth_source, active, master)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user.username.strip(),
                    key,
                    user.email,
                    user.email_verified,
                    user.oms_id,
                    user.accounts[0] if user.accounts else None,
                    user.password_hash,
                    user.auth_source,
                    user.active,
                    user.master,
                ),
            )
            user_id = cur.lastrowid
            assert user_id is not None
            for account in user.accounts:
                row = await self._one(db, "SELECT oms_id FROM accounts WHERE id = ?", (account,))
                if row is None:
                    await db.execute(
                        "INSERT INTO accounts (id, oms_id) VALUES (?, ?)", (account, user.oms_id)
                    )
                elif row[0] != user.oms_id:
                    raise StoreError(f"account {account} belongs to OMS {row[0]}")
            await db.executemany(
                "INSERT OR IGNORE INTO user_accounts (user_id, account_id) VALUES (?, ?)",
                [(user_id, a) for a in user.accounts],
            )
            await db.executemany(
                "INSERT OR IGNORE INTO user_permissions (user_id, permission) VALUES (?, ?)",
                [(user_id, p) for p in user.permissions],
            )
            await db.executemany(
                "INSERT INTO security_questions (user_id, question, answer_hash) VALUES (?, ?, ?)",
                [(user_id, q, a) for q, a in user.questions],
            )
            if audit is not None:
                entry = msgspec.structs.replace(audit, target_id=user_id)
                await self._insert_audit(db, [entry], await self._now(db))
            return user_id

        return await self._write(job)

    @staticmethod
    async def _now(db: aiosqlite.Connection) -> float:
        (now,) = await SqliteStore._one(db, "SELECT (julianday('now') - 2440587.5) * 86400.0")
        return float(now)

    async def set_totp(self, user_id: int, sealed: bytes | None) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute("UPDATE users SET totp_sealed = ? WHERE id = ?", (sealed, user_id))

        await self._write(job)

    async def user_by_id(self, user_id: int) -> User | None:
        row = await self._one(
            self._reader, f"SELECT {_USER_COLUMNS} FROM users u WHERE u.id = ?", (user_id,)
        )
        return _user(row) if row else None

    async def user_by_name(self, username: str) -> User | None:
        row = await self._one(
            self._reader,
            f"SELECT {_USER_COLUMNS} FROM users u WHERE u.username_key = ?",
            (username_key(username),),
        )
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        rows = await self._all(self._reader, f"SELECT {_USER_COLUMNS} FROM users u ORDER BY u.id")
        return [_user(row) for row in rows]

    async def security_questions(self, user_id: int) -> list[SecurityQuestion]:
        rows = await self._all(
            self._reader,
            "SELECT id, question, answer_hash FROM security_questions WHERE user_id = ?"
            " ORDER BY id",
            (user_id,),
        )
        return [SecurityQuestion(*row) for row in rows]

    async def set_lock(self, user_id: int, until: float | None, audit: AuditEntry) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute("UPDATE users SET locked_until = ? WHERE id = ?", (until, user_id))
            if until is None:
                await db.execute(
                    "DELETE FROM events WHERE kind = ? AND key = ?", (RESET_FAILURE, str(user_id))
                )
            await self._insert_audit(db, [audit], await self._now(db))

        await self._write(job)

    # -- sessions -----------------------------------------------------------------------------

    async def open_session(
        self,
        digest: bytes,
        user_id: int,
        now: float,
        password_version: int,
        *,
        totp_step: int | None = None,
        pending: bytes | None = None,
        clear: Sequence[tuple[str, str]] = (),
        release: Sequence[tuple[str, str, float]] = (),
        audit: Sequence[AuditEntry] = (),
    ) -> Outcome:
        async def job(db: aiosqlite.Connection) -> Outcome:
            # The single writer orders this against a reset's transaction: either the reset
            # came first (the version moved on: STALE) or it deletes this session.
            for kind, key, at in release:
                await self._release(db, kind, key, at)
            row = await self._one(
                db, "SELECT password_version, totp_last_step FROM users WHERE id = ?", (user_id,)
            )
            if totp_step is not None and row is not None and row[1] is not None:
                if row[1] >= totp_step:
                    return Outcome.REPLAYED  # the pending step stays, for another code
            if pending is not None:
                await db.execute("DELETE FROM pending_logins WHERE digest = ?", (pending,))
            if row is None or row[0] != password_version:
                return Outcome.STALE
            if totp_step is not None:
                await db.execute(
                    "UPDATE users SET totp_last_step = ? WHERE id = ?", (totp_step, user_id)
                )
            await db.execute(
                "INSERT INTO sessions (digest, user_id, created_at, last_seen) VALUES (?, ?, ?, ?)",
                (digest, user_id, now, now),
            )
            await db.execute("UPDATE users SET last_login = ? WHERE id = ?", (now, user_id))
            for kind, key in clear:
                await db.execute("DELETE FROM events WHERE kind = ? AND key = ?", (kind, key))
            if audit:
                await self._insert_audit(db, list(audit), now)
            return Outcome.DONE

        return await self._write(job)

    async def begin_second_step(
        self, digest: bytes, user_id: int, password_version: int, now: float
    ) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO pending_logins (digest, user_id, password_version, created_at)"
                " VALUES (?, ?, ?, ?)",
                (digest, user_id, password_version, now),
            )

        await self._write(job)

    async def second_step_attempt(
        self, digest: bytes, now: float, max_age: float, max_attempts: int
    ) -> tuple[int, int] | None:
        async def job(db: aiosqlite.Connection) -> tuple[int, int] | None:
            row = await self._one(
                db,
                "UPDATE pending_logins SET attempts = attempts + 1 WHERE digest = ?"
                " AND attempts < ? AND created_at > ? RETURNING user_id, password_version",
                (digest, max_attempts, now - max_age),
            )
            if row is None:
                await db.execute("DELETE FROM pending_logins WHERE digest = ?", (digest,))
                return None
            return int(row[0]), int(row[1])

        return await self._write(job)

    async def end_second_step(self, digest: bytes) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute("DELETE FROM pending_logins WHERE digest = ?", (digest,))

        await self._write(job)

    async def session(self, digest: bytes) -> Session | None:
        row = await self._one(
            self._reader,
            "SELECT user_id, created_at, last_seen FROM sessions WHERE digest = ?",
            (digest,),
        )
        return Session(*row) if row else None

    async def touch_session(self, digest: bytes, now: float) -> bool:
        async def job(db: aiosqlite.Connection) -> bool:
            cur = await db.execute(
                "UPDATE sessions SET last_seen = max(last_seen, ?) WHERE digest = ?", (now, digest)
            )
            return cur.rowcount == 1

        return await self._write(job)

    async def revoke_session(self, digest: bytes, user_id: int, reason: str) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute("DELETE FROM sessions WHERE digest = ?", (digest,))

        await self._write(job)

    # -- counted events -----------------------------------------------------------------------

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[int] | None:
        async def job(db: aiosqlite.Connection) -> list[int] | None:
            # Counted and recorded in one job of the single writer: nothing runs in between.
            counts = []
            for c in claims:
                count = await self._count(db, c, now)
                if count >= c.limit:
                    return None
                counts.append(count)
            await self._record(db, claims, now)
            return counts

        return await self._write(job)

    @staticmethod
    async def _count(db: aiosqlite.Connection, claim: Claim, now: float) -> int:
        (count,) = await SqliteStore._one(
            db,
            "SELECT count(*) FROM events WHERE kind = ? AND key = ? AND at > ?",
            (claim.kind, claim.key, now - claim.window),
        )
        return int(count)

    @staticmethod
    async def _record(db: aiosqlite.Connection, claims: Sequence[Claim], now: float) -> None:
        await db.executemany(
            "INSERT INTO events (kind, key, at) VALUES (?, ?, ?)",
            [(c.kind, c.key, now) for c in claims],
        )

    async def release(self, kind: str, key: str, at: float) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await self._release(db, kind, key, at)

        await self._write(job)

    @staticmethod
    async def _release(db: aiosqlite.Connection, kind: str, key: str, at: float) -> None:
        await db.execute(
            "DELETE FROM events WHERE rowid ="
            " (SELECT rowid FROM events WHERE kind = ? AND key = ? AND at = ? LIMIT 1)",
            (kind, key, at),
        )

    async def add_event(self, kind: str, key: str, now: float) -> int:
        async def job(db: aiosqlite.Connection) -> int:
            await db.execute(
                "INSERT INTO events (kind, key, at) VALUES (?, ?, ?)", (kind, key, now)
            )
            (count,) = await self._one(
                db, "SELECT count(*) FROM events WHERE kind = ? AND key = ?", (kind, key)
            )
            return int(count)

        return await self._write(job)

    async def count_events(self, kind: str, key: str, since: float) -> int:
        (count,) = await self._one(
            self._reader,
            "SELECT count(*) FROM events WHERE kind = ? AND key = ? AND at > ?",
            (kind, key, since),
        )
        return int(count)

    async def clear_events(self, kind: str, key: str) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute("DELETE FROM events WHERE kind = ? AND key = ?", (kind, key))

        await self._write(job)

    async def prune(self, events_before: float, sessions_idle_since: float) -> int:
        async def job(db: aiosqlite.Connection) -> int:
            gone = 0
            for sql, arg in _PRUNE:
                cur = await db.execute(sql, (arg(events_before, sessions_idle_since),))
                gone += max(cur.rowcount, 0)
            return gone

        return await self._write(job)

    # -- reset codes --------------------------------------------------------------------------

    async def issue_code(
        self,
        user_id: int,
        digest: bytes,
        now: float,
        expires_at: float,
        mail: MailItem,
        audit: list[AuditEntry],
    ) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE reset_codes SET state = 'void' WHERE user_id = ? AND state = 'pending'",
                (user_id,),
            )
            await db.execute(
                "INSERT INTO reset_codes (digest, user_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (digest, user_id, now, expires_at),
            )
            await self._insert_mail(db, mail, now)
            await self._insert_audit(db, audit, now)

        await self._write(job)

    async def reset_code(self, digest: bytes) -> ResetCode | None:
        row = await self._one(
            self._reader,
            "SELECT user_id, created_at, expires_at, state FROM reset_codes WHERE digest = ?",
            (digest,),
        )
        return ResetCode(*row) if row else None

    async def check_code(
        self,
        digest: bytes | None,
        user_id: int | None,
        now: float,
        invalid: Claim,
        attempt: Claim | None = None,
    ) -> tuple[Outcome, ResetCode | None]:
        async def job(db: aiosqlite.Connection) -> tuple[Outcome, ResetCode | None]:
            if await self._count(db, invalid, now) >= invalid.limit:
                return Outcome.THROTTLED, None
            row = None
            if digest is not None:
                row = await self._one(
                    db,
                    "SELECT user_id, created_at, expires_at, state FROM reset_codes"
                    " WHERE digest = ? AND state = 'pending' AND expires_at > ?"
                    " AND (? IS NULL OR user_id = ?)",
                    (digest, now, user_id, user_id),
                )
            if row is None:
                await self._record(db, [invalid], now)
                return Outcome.INVALID, None
            if attempt is not None:
                if await self._count(db, attempt, now) >= attempt.limit:
                    return Outcome.LOCKED, None
                await self._record(db, [attempt], now)
            return Outcome.DONE, ResetCode(*row)

        return await self._write(job)

    async def complete_reset(
        self,
        user_id: int,
        digest: bytes,
        password_hash: str,
        now: float,
        mail: MailItem,
        audit: list[AuditEntry],
        totp_step: int | None = None,
    ) -> Outcome:
        async def job(db: aiosqlite.Connection) -> Outcome:
            user = await self._one(
                db, "SELECT locked_until, totp_last_step FROM users WHERE id = ?", (user_id,)
            )
            if user is None:
                return Outcome.INVALID
            if user[0] is not None and user[0] > now:
                return Outcome.LOCKED
            if totp_step is not None and user[1] is not None and user[1] >= totp_step:
                return Outcome.REPLAYED
            cur = await db.execute(
                "UPDATE reset_codes SET state = 'used' WHERE digest = ? AND user_id = ?"
                " AND state = 'pending' AND expires_at > ?",
                (digest, user_id, now),
            )
            if cur.rowcount != 1:
                return Outcome.INVALID
            await db.execute(
                "UPDATE users SET password_hash = ?, locked_until = NULL,"
                " password_version = password_version + 1,"
                " totp_last_step = coalesce(?, totp_last_step) WHERE id = ?",
                (password_hash, totp_step, user_id),
            )
            await db.execute(
                "UPDATE reset_codes SET state = 'void' WHERE user_id = ? AND state = 'pending'",
                (user_id,),
            )
            await db.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
            await db.execute("DELETE FROM pending_logins WHERE user_id = ?", (user_id,))
            await db.execute(
                "DELETE FROM events WHERE kind = ? AND key = ?", (RESET_FAILURE, str(user_id))
            )
            await self._insert_mail(db, mail, now)
            await self._insert_audit(db, audit, now)
            return Outcome.DONE

        return await self._write(job)

    # -- mail outbox --------------------------------------------------------------------------

    async def claim_mail(self, now: float, lease: float, limit: int) -> list[OutboxRow]:
        async def job(db: aiosqlite.Connection) -> list[OutboxRow]:
            rows = await self._all(
                db,
                "SELECT id, kind, recipient, user_id, public, sealed, attempts, created_at"
                " FROM outbox WHERE state = 'queued' AND due_at <= ? ORDER BY id LIMIT ?",
                (now, limit),
            )
            await db.executemany(
                "UPDATE outbox SET due_at = ?, attempts = attempts + 1 WHERE id = ?",
                [(now + lease, row[0]) for row in rows],
            )
            return [
                OutboxRow(
                    id=r[0],
                    kind=r[1],
                    recipient=r[2],
                    user_id=r[3],
                    public=msgspec.json.decode(r[4]),
                    sealed=r[5],
                    attempts=r[6] + 1,
                    created_at=r[7],
                )
                for r in rows
            ]

        return await self._write(job)

    async def mail_delivered(self, mail_id: int, now: float) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE outbox SET state = 'sent', sealed = NULL, sent_at = ?, last_error = NULL"
                " WHERE id = ?",
                (now, mail_id),
            )

        await self._write(job)

    async def mail_failed(
        self, mail_id: int, now: float, error: str, retry_at: float | None
    ) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            if retry_at is None:
                await db.execute(
                    "UPDATE outbox SET state = 'failed', sealed = NULL, last_error = ?"
                    " WHERE id = ?",
                    (error, mail_id),
                )
            else:
                await db.execute(
                    "UPDATE outbox SET due_at = ?, last_error = ? WHERE id = ?",
                    (retry_at, error, mail_id),
                )

        await self._write(job)

    async def mail_counts(self) -> dict[str, int]:
        rows = await self._all(self._reader, "SELECT state, count(*) FROM outbox GROUP BY state")
        counts = {"queued": 0, "sent": 0, "failed": 0}
        counts.update({state: n for state, n in rows})
        return counts

    # -- audit --------------------------------------------------------------------------------

    async def audit(self, entries: list[AuditEntry], now: float) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await self._insert_audit(db, entries, now)

        await self._write(job)

    async def audit_rows(
        self,
        *,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 100,
        oldest_first: bool = False,
    ) -> list[AuditRow]:
        where: list[str] = []
        params: list[Any] = []
        if user is not None:
            key = username_key(user)
            where.append(
                "(target_id IN (SELECT id FROM users WHERE username_key = ?)"
                " OR actor_id IN (SELECT id FROM users WHERE username_key = ?)"
                " OR lower(target_name) = ?)"
            )
            params += [key, key, key]
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if until is not None:
            where.append("at < ?")
            params.append(until)
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id" + ("" if oldest_first else " DESC")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = await self._all(self._reader, sql, params)
        return [
            AuditRow(
                id=r[0],
                at=r[1],
                action=r[2],
                actor_id=r[3],
                target_id=r[4],
                target_name=r[5],
                source=r[6],
                detail=r[7],
                prev_hash=r[8],
                hash=r[9],
            )
            for r in rows
        ]
