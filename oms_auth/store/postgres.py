"""PostgreSQL through asyncpg: several oms-auth nodes serving one exchange from one database.

Every write method is one transaction on a pooled connection, committed when it returns, as in
:mod:`.sqlite`. SQLite gets its ordering from a single writer; here each rule is held by
PostgreSQL itself, as docs/rules.md ("Concurrency: what holds under bursts and across nodes")
tables rule by rule: advisory locks per
(schema, kind, key) around a limit's count-then-insert; the user's row ``FOR UPDATE`` first in
every write about a user, so a code, a lock, a TOTP step or a password version is read as it
is; compare-and-set ``UPDATE``s and unique inserts that let one of racing calls win (a code's
redemption, an API key's nonce); ``FOR UPDATE SKIP LOCKED`` and a lease for the outbox; an advisory
lock for the audit chain's linker (:mod:`.postgres_audit`: decisions write their audit rows
unlinked, linked after commit); ``NOTIFY`` inside a revoking transaction, heard by every node's
listener.

Lock order, to rule out deadlocks: users' rows (the one written for and the caller's, the lower
id first), then the caller's session row, then event locks (sorted by kind and key), then the
audit lock, which only the linker (holding nothing else) and an import's batch take. Advisory
locks are keyed by schema, so stores in different schemas of one database never wait on each
other.

PostgreSQL text cannot hold NUL, which a client may send inside a username: event keys are
escaped one-to-one (``Statements.event_key``), audit and error text shows U+FFFD instead
(``Statements.text``).

The decisions are in :mod:`.plans` (shared with SQLite), the statements in :mod:`.sql`; the
transaction primitives (row locks, advisory keys, running a plan) in :mod:`.postgres_tx`, a
transaction's statements sent together in :mod:`.postgres_batch` (a reset request's in one
round trip), the schema in :mod:`.postgres_schema` and :mod:`.postgres_migrate`, the listener in
:mod:`.postgres_listener`, the URL in :mod:`.urls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

import asyncpg
import msgspec

from protocol.messages import LogoutReason

from . import import_plan, keys, plans, postgres_import
from . import sql as q
from .audit import ChainKeys, checked_audit_key
from .base import Store
from .plans import AccountState, LoginState, ResetState
from .postgres_audit import AuditLinker, append_linked, insert_pending, mails_sent, pending_parts
from .postgres_batch import Prepared
from .postgres_devices import PostgresDevices
from .postgres_limits import PostgresLimits
from .postgres_listener import CHANGES_KEPT_SECONDS, CHANNEL, RevocationListener, announce
from .postgres_migrate import migrate
from .postgres_pool import FairPool
from .postgres_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
)
from .postgres_tx import (
    ADVISORY_LOCK,
    CONNECTION_ERRORS,
    S,
    committing,
    count_of,
    keep_session,
    lock_for,
    lock_key,
    read_state,
    run_plan,
    unreachable,
)
from .records import (
    RESET_FAILURE,
    AccountChange,
    ApiKey,
    AuditEntry,
    Authority,
    Claim,
    CodeIssue,
    Imported,
    ImportItem,
    MailItem,
    MailState,
    NewUser,
    OutboxRow,
    Outcome,
    PasswordReset,
    PendingStep,
    ResetCode,
    Revocation,
    SessionOpening,
    StoreError,
    UsernameConfusable,
    UsernameTaken,
    username_key,
    username_skeleton,
)
from .sealed import SealedColumn, reseal_sql
from .urls import PgTarget, parse_url

if TYPE_CHECKING:
    from .postgres_pool import Conn

__all__ = [
    "PostgresStore",
    "PgTarget",
    "parse_url",
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "CHANNEL",
    "CHANGES_KEPT_SECONDS",
    "CONNECTION_ERRORS",
]

_HEALTH_ERRORS: tuple[type[BaseException], ...] = (StoreError, *CONNECTION_ERRORS)

# The shared statements with the row locks this store's rules take (see the module docstring).
_LOGIN_STATE_LOCKED = S.login_state + " FOR UPDATE"
_LOCKED_UNTIL_LOCKED = S.locked_until + " FOR UPDATE"
_RESET_STATE_LOCKED = S.reset_state + " FOR UPDATE"
_ACCOUNT_STATE_LOCKED = S.account_state + " FOR UPDATE"
_LIVE_CODE_SHARED = S.live_code + " FOR SHARE"
_CLAIM_MAIL = (
    f"WITH due AS (SELECT id FROM outbox WHERE state = '{MailState.QUEUED}' AND due_at <= $1"
    " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)"
    " UPDATE outbox o SET due_at = $1 + $3, attempts = o.attempts + 1, claimed = 1 FROM due"
    " WHERE o.id = due.id RETURNING " + ", ".join(f"o.{c}" for c in q.OUTBOX_COLUMNS)
)
_TOUCH_SESSION = "UPDATE sessions SET last_seen = greatest(last_seen, $1) WHERE digest = $2"
_NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"


class PostgresStore(PostgresDevices, PostgresLimits, Store):
    """PostgreSQL at ``url`` (see the module docstring), schema created on first use."""

    def __init__(
        self, url: str, *, audit_key: bytes | ChainKeys, key: keys.KeyBinding | None = None
    ) -> None:
        self.target = parse_url(url)
        self._audit_key = checked_audit_key(audit_key)
        self._key = key  # None: opened without checking the service key (tests, tools)
        self.schema = self.target.schema
        # Tells this node's own notifications apart: the engine already logged those users off.
        self.node = secrets.token_hex(8)
        self.listener = RevocationListener(
            self._connect_listener, schema=self.schema, node=self.node
        )
        self._pool: FairPool | None = None
        self._audit_lock = lock_key(self.schema, "audit")
        self._linker = AuditLinker(lambda: self._db, lambda: self._audit_key, self._audit_lock)
        self._prepared = Prepared()  # statements prepared by name, per pooled connection

    def __repr__(self) -> str:
        return f"PostgresStore({self.target!r})"

    # -- life cycle ---------------------------------------------------------------------------

    def _server_settings(self, role: str) -> dict[str, str]:
        # application_name lets an operator (and the tests) find this store's connections.
        return {"search_path": self.schema, "application_name": f"{role} {self.schema}"[:63]}

    async def open(self) -> None:
        t = self.target
        try:
            pool = await asyncpg.create_pool(
                t.dsn,
                min_size=t.pool_min,
                max_size=t.pool_max,
                command_timeout=t.command_timeout,
                timeout=t.connect_timeout,
                max_inactive_connection_lifetime=300.0,
                server_settings=self._server_settings("oms-auth"),
                reset=keep_session,
                init=self._prepared.fresh,
            )
        except CONNECTION_ERRORS as exc:
            raise StoreError(unreachable(self.target, exc)) from None
        self._pool = FairPool(pool, t.pool_max)
        try:
            async with self._tx() as conn:
                await migrate(conn, self.schema, t.where, self._audit_key, self._key)
        except CONNECTION_ERRORS as exc:
            await self.close()
            raise StoreError(unreachable(self.target, exc)) from None
        except BaseException:
            await self.close()
            raise
        self._linker.start()

    async def close(self) -> None:
        await self.listener.stop()
        if self._pool is not None:
            await self._linker.stop()  # its last pass needs the pool
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 10)
            except CONNECTION_ERRORS:
                pool.terminate()

    async def writable(self) -> str | None:
        try:
            async with asyncio.timeout(5), self._db.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                try:
                    await conn.execute(
                        "INSERT INTO meta (key, value) VALUES ($1, '')",
                        "healthz:" + secrets.token_hex(8),
                    )
                finally:
                    await tx.rollback()
        except TimeoutError:
            return "the store took no write within 5 s"
        except _HEALTH_ERRORS as exc:
            return f"the store takes no write: {str(exc) or type(exc).__name__}"
        return None

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def _db(self) -> FairPool:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    _sql = S

    async def _fetch(self, statement: str, args: tuple[object, ...]) -> list[q.Row]:
        return list(await self._db.fetch(statement, *args))

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Conn]:
        """One pooled connection in one transaction: committed when the block ends."""
        async with self._db.acquire() as conn, conn.transaction():
            yield conn

    async def _connect_listener(self) -> asyncpg.Connection[asyncpg.Record]:
        t = self.target
        return await asyncpg.connect(
            t.dsn,
            timeout=t.connect_timeout,
            command_timeout=t.command_timeout,
            server_settings=self._server_settings("oms-auth-listener"),
        )

    async def _insert_audit(self, conn: Conn, entries: Sequence[AuditEntry], now: float) -> None:
        """Write ``entries`` unlinked in ``conn``'s transaction; the linker links them after
        it commits (:mod:`.postgres_audit`)."""
        if entries:
            await insert_pending(conn, entries, now)
            self._linker.wake()

    @staticmethod
    async def _insert_mail(conn: Conn, mail: MailItem, now: float) -> None:
        await conn.execute(S.insert_mail, *q.mail_args(mail, now))

    @staticmethod
    async def _now(conn: Conn) -> float:
        return float(await conn.fetchval(_NOW))

    # -- users --------------------------------------------------------------------------------

    async def create_user(
        self,
        user: NewUser,
        audit: AuditEntry | None = None,
        *,
        authority: Authority | None = None,
    ) -> int:
        if any("\x00" in t for t in postgres_import.user_texts(user)):
            raise StoreError("a user's names, email and questions cannot hold a NUL character")
        taken = UsernameTaken(f"username {user.username.strip()!r} is taken")
        key, skeleton = username_key(user.username), username_skeleton(user.username)
        async with self._tx() as conn:
            await lock_for(conn, None, authority)
            # Two nodes adding look-alike names at once: one waits for the other's commit.
            await conn.execute(ADVISORY_LOCK, lock_key(self.schema, "skeleton:" + skeleton))
            if await conn.fetchval(S.username_taken, key):
                raise taken
            if await conn.fetchval(S.username_lookalike, skeleton, key):
                raise UsernameConfusable("the username looks too much like an existing username")
            try:
                user_id = await self._insert_user(conn, user)
            except asyncpg.UniqueViolationError:  # the same name, added on another node just now
                raise taken from None
            if audit is not None:
                entry = msgspec.structs.replace(audit, target_id=user_id)
                await self._insert_audit(conn, [entry], await self._now(conn))
            return user_id

    @staticmethod
    async def _insert_user(conn: Conn, user: NewUser) -> int:
        """A new user's rows (its name checked by the caller); its id."""
        user_id = int(await conn.fetchval(S.insert_user, *q.user_args(user)))
        await conn.executemany(S.insert_account, q.account_args(user))
        await conn.executemany(S.insert_user_account, q.user_account_args(user_id, user))
        await conn.executemany(S.insert_permission, [(user_id, p) for p in user.permissions])
        await conn.executemany(
            S.insert_question, [(user_id, question, a) for question, a in user.questions]
        )
        return user_id

    async def import_users(self, batch: Sequence[ImportItem]) -> list[tuple[Imported, int | None]]:
        if any("\x00" in t for item in batch for t in postgres_import.user_texts(item.user)):
            raise StoreError("a user's names, email and questions cannot hold a NUL character")
        skeletons = {import_plan.name_pair(item)[1] for item in batch}
        locks = sorted(lock_key(self.schema, "skeleton:" + s) for s in skeletons)
        async with self._tx() as conn:
            # As create_user takes them, in one order (no deadlock with another import).
            await conn.execute(postgres_import.LOCK_ALL, msgspec.json.encode(locks).decode())
            written = await postgres_import.import_batch(conn, self.schema, batch)
            if written.audit:
                now = await self._now(conn)
                await append_linked(conn, self._audit_key, self._audit_lock, written.audit, now)
        outcomes: list[tuple[Imported, int | None]] = written.outcomes
        return outcomes

    async def reseal(self, column: SealedColumn, pk: object, old: bytes, new: bytes) -> bool:
        done = await self._db.execute(q.to_dollar(reseal_sql(column)), new, old, pk)
        return str(done).endswith(" 1")

    async def take_key(self, binding: keys.KeyBinding, audit_key: ChainKeys) -> bool:
        chain = checked_audit_key(audit_key)
        async with self._tx() as conn:
            # One node at a time moves the store's current key on (the migration's lock).
            await conn.execute(ADVISORY_LOCK, lock_key(self.schema, "migrate"))
            rows = await conn.fetch(keys.ADVANCE_READ)
            steps = keys.advance_plan(binding, {str(k): str(v) for k, v in rows})
            if steps is None:
                return False
            for statement, args in steps:
                await conn.execute(q.to_dollar(statement), *args)
        self._audit_key = chain
        return True

    async def set_totp(self, user_id: int, sealed: bytes | None) -> None:
        await self._db.execute(S.set_totp, sealed, user_id)

    async def replace_hash(self, user_id: int, verified: str, replacement: str) -> None:
        await self._db.execute(S.rehash_password, replacement, user_id, verified)

    async def change_account(self, change: AccountChange, now: float) -> Outcome:
        async with self._tx() as conn:
            # The user's row locked, as a reset and a login take it: the password version and
            # the TOTP step are read as they are until this commits.
            await lock_for(conn, change.user_id, change.authority)
            state = await read_state(conn, AccountState, _ACCOUNT_STATE_LOCKED, change.user_id)
            outcome = await run_plan(conn, plans.account_plan(S, change, state, now))
            if outcome is not Outcome.DONE:
                return outcome
            if change.end_sessions is not None:
                await self._revoked(conn, Revocation(change.user_id, change.end_sessions), now)
            await self._insert_audit(conn, [change.audit], now)
            return Outcome.DONE

    async def set_lock(
        self,
        user_id: int,
        until: float | None,
        audit: AuditEntry,
        *,
        authority: Authority | None = None,
    ) -> None:
        async with self._tx() as conn:
            await lock_for(conn, user_id, authority)
            await conn.execute(S.set_lock, until, user_id)
            if until is None:
                await conn.execute(S.clear_events, RESET_FAILURE, str(user_id))
            await self._insert_audit(conn, [audit], await self._now(conn))

    async def lock_when_spent(
        self, user_id: int, claim: Claim, now: float, until: float, audit: AuditEntry
    ) -> bool:
        async with self._tx() as conn:
            # The user's row first (as a reset holds it): a reset that clears the count
            # commits before or after this, never between the count and the lock.
            row = await conn.fetchrow(_LOCKED_UNTIL_LOCKED, user_id)
            await self._lock_claims(conn, [claim])
            locked_until = row[0] if row is not None else None
            count = await self._count(conn, claim, now)
            if not plans.lock_due(locked_until, row is not None, count, claim, now):
                return False
            await conn.execute(S.set_lock, until, user_id)
            await self._insert_audit(conn, [audit], now)
            return True

    # -- sessions -----------------------------------------------------------------------------

    async def open_session(self, opening: SessionOpening) -> Outcome:
        async with self._tx() as conn:
            # The user's row lock orders this against a reset on any node (it holds the same
            # lock): either the reset committed first (the version moved on: STALE) or it
            # waits and then deletes this session. The API key's row lock and its nonces'
            # primary key order logins sharing a nonce: the first records it.
            state = await read_state(conn, LoginState, _LOGIN_STATE_LOCKED, opening.user_id)
            for slot in opening.release:
                await self._release(conn, slot)
            outcome = await run_plan(conn, plans.session_plan(S, opening, state))
            if outcome is Outcome.DONE:
                await self._insert_audit(conn, opening.audit, opening.now)
            return outcome

    async def begin_second_step(
        self, digest: bytes, user_id: int, password_version: int, now: float
    ) -> None:
        await self._db.execute(S.insert_pending_login, digest, user_id, password_version, now)

    async def second_step_attempt(
        self, digest: bytes, now: float, max_age: float, max_attempts: int
    ) -> PendingStep | None:
        async with self._tx() as conn:
            # The row lock the UPDATE takes makes concurrent attempts (any node) count in turn.
            row = await conn.fetchrow(S.pending_login_attempt, digest, max_attempts, now - max_age)
            if row is None:
                await conn.execute(S.delete_pending_login, digest)
                return None
            return PendingStep(int(row[0]), int(row[1]))

    async def end_second_step(self, digest: bytes) -> None:
        await self._db.execute(S.delete_pending_login, digest)

    async def touch_session(self, digest: bytes, now: float) -> bool:
        return await self._db.execute(_TOUCH_SESSION, now, digest) == "UPDATE 1"

    async def revoke_session(self, digest: bytes, user_id: int, reason: str) -> None:
        async with self._tx() as conn:
            await conn.execute(S.delete_session, digest)
            await self._revoked(conn, Revocation(user_id, reason, digest), time.time())

    async def _revoked(self, conn: Conn, revocation: Revocation, now: float) -> None:
        await announce(conn, self.schema, self.node, revocation, now)

    async def listen_revocations(self, callback: Callable[[Revocation], None]) -> None:
        self.listener.add(callback)
        if self.listener.started:
            return
        try:
            await self.listener.start()
        except CONNECTION_ERRORS as exc:
            raise StoreError(unreachable(self.target, exc)) from None

    # -- API keys -----------------------------------------------------------------------------

    async def add_api_key(
        self,
        key: ApiKey,
        max_keys: int,
        audit: AuditEntry,
        *,
        authority: Authority | None = None,
    ) -> bool:
        async with self._tx() as conn:
            # The user's row first: two additions on any nodes count in turn, and a reset
            # revoking the user's keys commits before this (the caller's session is gone then)
            # or after it (and deletes this key too).
            await lock_for(conn, key.user_id, authority)
            if int(await conn.fetchval(S.count_user_api_keys, key.user_id)) >= max_keys:
                return False
            await conn.execute(S.insert_api_key, *q.api_key_args(key))
            await self._insert_audit(conn, [audit], key.created_at)
            return True

    async def remove_api_key(
        self,
        user_id: int,
        key: str,
        reason: str,
        audit: AuditEntry,
        *,
        authority: Authority | None = None,
    ) -> list[bytes] | None:
        if "\x00" in key:
            return None
        async with self._tx() as conn:
            # The user's row first, as a reset (which may delete the same key) and a login
            # with the key take it: no cycle.
            await lock_for(conn, user_id, authority)
            rows = await conn.fetch(S.delete_api_key_sessions, key, user_id)
            if await conn.execute(S.delete_api_key, key, user_id) != "DELETE 1":
                return None  # not this user's key: no session of it was either
            now = await self._now(conn)
            digests = [bytes(row[0]) for row in rows]
            for session_digest in digests:
                await self._revoked(conn, Revocation(user_id, reason, session_digest), now)
            await self._insert_audit(conn, [audit], now)
            return digests

    async def prune(self, events_before: float, sessions_idle_since: float) -> int:
        # One transaction per table: clean-up needs no atomicity, and holding one table's rows
        # while waiting for another's would invert a reset's lock order (a deadlock).
        gone = 0
        for statement, args in q.prune_plan(S, events_before, sessions_idle_since):
            gone += count_of(await self._db.execute(statement, *args))
        return gone

    # -- reset codes --------------------------------------------------------------------------

    async def issue_code(self, issue: CodeIssue) -> bool:
        async with committing(self._db) as conn:
            # One code operation per user at a time, on every node: the newest code wins. The
            # user's row first, then the limit's lock, as lock_when_spent takes them. One round
            # trip (postgres_batch): BEGIN, the locks, the caller's authority, the limit's slot
            # taken only while one is left, the writes (older codes voided, the code, its mail),
            # the audit rows and COMMIT.
            limit = issue.limit
            limit_lock = None if limit is None else self._events_key(limit.kind, limit.key)
            plan = plans.issue_plan(S, issue)
            audit = pending_parts(issue.audit, issue.now)
            outcome = await self._prepared.transact(
                conn, issue.user_id, issue.authority, limit_lock, plan, audit
            )
            if outcome is not Outcome.DONE:
                return False
            if issue.audit:
                self._linker.wake()
            return True

    async def check_code(
        self,
        digest: bytes | None,
        user_id: int | None,
        now: float,
        invalid: Claim,
        attempt: Claim | None = None,
    ) -> tuple[Outcome, ResetCode | None]:
        claims = [invalid] if attempt is None else [invalid, attempt]
        async with self._tx() as conn:
            await self._lock_claims(conn, claims)
            invalid_count = await self._count(conn, invalid, now)
            row = None
            if digest is not None and not plans.throttled(invalid_count, invalid):
                # FOR SHARE waits for a reset consuming this code to commit, then sees it used.
                args = q.live_code_args(digest, now, user_id)
                row = await conn.fetchrow(_LIVE_CODE_SHARED, *args)
            found = plans.CodeCheck(
                invalid_count,
                q.to_code(row) if row is not None else None,
                await self._count(conn, attempt, now) if attempt is not None else 0,
            )
            outcome, counted = plans.code_check(found, invalid, attempt)
            await self._record(conn, counted, now)
            return outcome, found.code if outcome is Outcome.DONE else None

    async def complete_reset(self, reset: PasswordReset) -> Outcome:
        async with self._tx() as conn:
            # Locked first: the lock and the TOTP step are read as they are now, and no login
            # or lock on any node changes them before this commits. The race between resets is
            # decided by the code's redemption: a loser, once the winner commits, finds none.
            state = await read_state(conn, ResetState, _RESET_STATE_LOCKED, reset.user_id)
            held = await conn.fetch(S.questions, reset.user_id)
            plan = plans.reset_plan(S, reset, state, [(r[1], r[2]) for r in held])
            outcome = await run_plan(conn, plan)
            if outcome is not Outcome.DONE:
                return outcome
            revocation = Revocation(reset.user_id, LogoutReason.PASSWORD_CHANGED)
            await self._revoked(conn, revocation, reset.now)
            await self._insert_audit(conn, [*reset.audit, *plan.audit], reset.now)
            return Outcome.DONE

    # -- mail outbox --------------------------------------------------------------------------

    async def claim_mail(self, now: float, lease: float, limit: int) -> list[OutboxRow]:
        rows = await self._db.fetch(_CLAIM_MAIL, now, limit, lease)
        return sorted((q.to_outbox(r) for r in rows), key=lambda row: row.id)

    async def hand_back_mail(self, mail_ids: Sequence[int], now: float) -> None:
        await self._db.executemany(S.hand_back_mail, [(now, mail_id) for mail_id in mail_ids])

    async def mails_delivered(
        self, mail_ids: Sequence[int], now: float, audit: Sequence[AuditEntry] = ()
    ) -> None:
        await mails_sent(self._db, mail_ids, now, audit)
        if audit:
            self._linker.wake()

    async def mail_failed(
        self, mail_id: int, now: float, error: str, retry_at: float | None
    ) -> None:
        if retry_at is None:
            await self._db.execute(S.mail_given_up, S.text(error), mail_id)
        else:
            await self._db.execute(S.mail_retry, retry_at, S.text(error), mail_id)

    # -- audit --------------------------------------------------------------------------------

    async def audit(self, entries: list[AuditEntry], now: float) -> None:
        async with self._tx() as conn:
            await self._insert_audit(conn, entries, now)

    async def _audit_settled(self) -> None:
        await self._linker.link_for_reader()  # every committed decision, in the chain
