"""The store interface: what the engine needs from persistence, and nothing else.

Each implementation brings its own SQL and concurrency (:mod:`.sqlite`, :mod:`.postgres`); the
records crossing this interface are in :mod:`.records`.

Every write method is one transaction: when it returns, its effect is committed. A write made
for a caller takes its :class:`~.records.Authority` and re-checks it inside that transaction
before anything else is written: when it no longer holds (the caller's session ended, its
password changed, it lost the permission) the write raises :class:`~.records.CallerGone` and
leaves no trace. So no decision taken on a caller's power lands after that power is gone, on
any node.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

from . import keys
from . import recovery as rc
from . import sql as q
from .audit import AuditCheck, ChainKeys, check_chain
from .device_sql import (
    Device,
    DeviceCodeIssue,
    SessionEntry,
    device_sql,
    to_device,
    to_session_entry,
)
from .records import (
    AccountChange,
    Admission,
    ApiKey,
    AuditEntry,
    AuditRow,
    Authority,
    Claim,
    CodeIssue,
    Imported,
    ImportItem,
    NewUser,
    OutboxRow,
    Outcome,
    PasswordReset,
    PendingStep,
    ResetCode,
    Revocation,
    SecurityQuestion,
    Session,
    SessionOpening,
    Slot,
    User,
    username_key,
)
from .sealed import SealedColumn, batch_sql, count_sql
from .sql import Row, Statements

__all__ = ["Store"]


# Users by the head of a hash that is not Argon2id (no parameter: the same text on both stores).
_HASH_HEADS = (
    "SELECT substr(password_hash, 1, 15), count(*) FROM users"
    " WHERE password_hash NOT LIKE '$argon2id$%' AND password_hash <> '' GROUP BY 1"
)


class Store(abc.ABC):
    """What the engine needs from persistence."""

    # The audit chain's HMAC keys (crypto.audit_key of each key of the ring), given to each
    # store at construction and replaced when the node takes up a rotated ring (take_key).
    _audit_key: ChainKeys

    # Whether import_users calls are written one at a time in the order they were made, each
    # in its own transaction, even when the next is made before the one before returned (the
    # SQLite store's single writer): an import then queues its next batch early, so the store
    # never waits for it. Otherwise a caller waits for each before making the next.
    imports_in_order: bool = False

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def writable(self) -> str | None:
        """None when the store takes a write (one made and rolled back, within a few seconds;
        the SQLite store also writes a page beside itself, since a rolled-back write never
        reaches its disk); else why not, in words fit for ``/healthz`` (no secret, no path)."""

    # Reads: one statement each, the same on both stores (the dialect's texts in ``_sql``)
    _sql: Statements

    @abc.abstractmethod
    async def _fetch(self, statement: str, args: tuple[object, ...]) -> list[Row]:
        """The rows ``statement`` (one of ``_sql``) selects, read outside any write."""

    async def _by_key(self, statement: str, args: tuple[object, ...]) -> list[Row]:
        """The rows of a read by key: a few rows found through an index (a user, a session, a
        user's questions), as every request reads them. :meth:`_fetch` unless the store has a
        cheaper way to run such a read (SQLite: on the event loop, docs/performance.md)."""
        return await self._fetch(statement, args)

    async def _first(self, statement: str, *args: object) -> Row | None:
        """The first row of a read by key."""
        rows = await self._by_key(statement, args)
        return rows[0] if rows else None

    async def user_by_id(self, user_id: int) -> User | None:
        row = await self._first(self._sql.user_by_id, user_id)
        return q.to_user(row) if row else None

    async def user_by_name(self, username: str) -> User | None:
        """Case-insensitive, after trimming."""
        if "\x00" in username:  # no stored name holds one
            return None
        row = await self._first(self._sql.user_by_name, username_key(username))
        return q.to_user(row) if row else None

    async def user_and_named(self, user_id: int, username: str) -> tuple[User | None, User | None]:
        """:meth:`user_by_id` and :meth:`user_by_name` in one read (one round trip on
        PostgreSQL: a caller and the user it asks about, docs/performance.md)."""
        if "\x00" in username:  # no stored name holds one
            return await self.user_by_id(user_id), None
        key = username_key(username)
        rows = await self._by_key(self._sql.user_and_named, (user_id, key))
        by_id = next((q.to_user(r) for r in rows if r[0] == user_id), None)
        named = next((q.to_user(r) for r in rows if r[-1] == key), None)  # its key: last
        return by_id, named

    async def users_by_email(self, oms_id: int, email: str) -> list[User]:
        """The OMS's users with ``email`` (case-insensitive): none, one, or two (ambiguous)."""
        if "\x00" in email:  # no stored email holds one
            return []
        rows = await self._by_key(self._sql.users_by_email, (oms_id, email))
        return [q.to_user(row) for row in rows]

    async def event_count(self, kind: str, key: str, since: float) -> int:
        """Events of a counter after ``since``, read outside any write."""
        row = await self._first(self._sql.count_events_since, kind, self._sql.event_key(key), since)
        return int(row[0]) if row else 0

    async def list_users(self) -> list[User]:
        return [q.to_user(row) for row in await self._fetch(self._sql.users, ())]

    async def users_after(self, user_id: int, limit: int) -> list[User]:
        """Up to ``limit`` users whose id is past ``user_id``, by id: a page of all users."""
        return [q.to_user(r) for r in await self._fetch(self._sql.users_after, (user_id, limit))]

    async def locked_users(self, oms_id: int, now: float) -> list[User]:
        """The OMS's users locked at ``now``, by UserId."""
        rows = await self._fetch(self._sql.users_locked, (oms_id, now))
        return [q.to_user(row) for row in rows]

    async def security_questions(self, user_id: int) -> list[SecurityQuestion]:
        rows = await self._by_key(self._sql.questions, (user_id,))
        return [q.to_question(row) for row in rows]

    async def session(self, digest: bytes) -> Session | None:
        row = await self._first(self._sql.session, digest)
        return q.to_session(row) if row else None

    async def api_key(self, key: str) -> ApiKey | None:
        if "\x00" in key:  # no stored key holds one
            return None
        row = await self._first(self._sql.api_key, key)
        return q.to_api_key(row) if row else None

    async def api_keys(self, user_id: int) -> list[ApiKey]:
        """The user's keys, oldest first."""
        rows = await self._fetch(self._sql.user_api_keys, (user_id,))
        return [q.to_api_key(row) for row in rows]

    async def recovery_code_held(self, user_id: int, digest: bytes) -> bool:
        """Whether ``digest`` is one of the user's unused recovery codes."""
        return await self._first(self._sql.placeholders(rc.HELD), user_id, digest) is not None

    async def recovery_codes_left(self, user_id: int) -> int:
        row = await self._first(self._sql.placeholders(rc.LEFT), user_id)
        return int(row[0]) if row is not None else 0

    async def mail_counts(self) -> dict[str, int]:
        """Messages by state (:class:`~.records.MailState`), every state named."""
        return q.mail_counts(await self._fetch(self._sql.mail_counts, ()))

    async def hash_heads(self) -> list[tuple[str, int]]:
        """Users whose password hash is not Argon2id, by the hash's first 15 characters (what
        names a scheme): (head, count)."""
        rows = await self._fetch(_HASH_HEADS, ())
        return [(str(row[0]), int(row[1])) for row in rows]

    # Users
    @abc.abstractmethod
    async def create_user(
        self,
        user: NewUser,
        audit: AuditEntry | None = None,
        *,
        authority: Authority | None = None,
    ) -> int:
        """Insert a user with its accounts, permissions and questions; StoreError on a
        duplicate username (compared case-insensitively)."""

    @abc.abstractmethod
    async def set_totp(self, user_id: int, sealed: bytes | None) -> None: ...

    @abc.abstractmethod
    async def import_users(self, batch: Sequence[ImportItem]) -> list[tuple[Imported, int | None]]:
        """One transaction for the batch; for each item, in order, what became of it and its
        new id. An item whose name is taken (by a user with the same email: ALREADY) or looks
        like a taken one writes nothing; the others are written whole (docs/import.md). The
        batch's own names are not compared with each other: the caller does that."""

    @abc.abstractmethod
    async def replace_hash(self, user_id: int, verified: str, replacement: str) -> None:
        """The user's password hash becomes ``replacement`` while it is still ``verified``
        (an imported hash upgraded at a login that has a second step to go)."""

    @abc.abstractmethod
    async def change_account(self, change: AccountChange, now: float) -> Outcome:
        """Apply an :class:`AccountChange` in one transaction, re-checking in it: STALE when
        the user is gone or its password is no longer ``password_version``, REPLAYED when
        ``totp_step`` is not newer than the last accepted step (it becomes the last), INVALID
        when ``set_totp`` finds TOTP already in the state asked for; nothing changes then.
        On DONE the audit row and the notice are written with it, and with ``end_sessions``
        other nodes are told. With ``authority``, CallerGone when it no longer holds."""

    @abc.abstractmethod
    async def set_lock(
        self,
        user_id: int,
        until: float | None,
        audit: AuditEntry,
        *,
        authority: Authority | None = None,
    ) -> None:
        """Lock a user until ``until`` (None unlocks and clears the failure count)."""

    @abc.abstractmethod
    async def lock_when_spent(
        self, user_id: int, claim: Claim, now: float, until: float, audit: AuditEntry
    ) -> bool:
        """Lock the user until ``until`` if ``claim``'s counter is used up, in one transaction
        (so a success clearing the count and this lock are ordered); False when the count is
        below the limit or the user is locked already (then nothing is written)."""

    # Sessions (keyed by the SHA-256 of the token)
    @abc.abstractmethod
    async def open_session(self, opening: SessionOpening) -> Outcome:
        """A successful login, in one transaction: the session is created only while the user's
        password is still ``password_version`` (else STALE) and, with ``totp_step``, only if
        that step is newer than the last accepted (else REPLAYED; it becomes the last). With
        ``api_key`` (the key and its nonce's digest) the session is the key's, created only if the
        key is still the user's and the nonce was never accepted for it (else REPLAYED; it is
        recorded), an insert that of racing logins on any node lets one through. Either way
        ``pending`` (a second step) ends, the ``release``d reservations go, and on DONE the
        ``clear``ed counters go, the login time is recorded and ``audit`` written."""

    @abc.abstractmethod
    async def begin_second_step(
        self, digest: bytes, user_id: int, password_version: int, now: float
    ) -> None:
        """Remember a login that passed its password step and waits for a TOTP code."""

    @abc.abstractmethod
    async def second_step_attempt(
        self, digest: bytes, now: float, max_age: float, max_attempts: int
    ) -> PendingStep | None:
        """Reserve one attempt at a pending second step: whose it is and for which version, or
        None when it does not exist, is older than ``max_age`` or has used ``max_attempts``."""

    @abc.abstractmethod
    async def end_second_step(self, digest: bytes) -> None: ...

    @abc.abstractmethod
    async def touch_session(self, digest: bytes, now: float) -> bool:
        """Record activity; False when the session no longer exists (revoked elsewhere)."""

    @abc.abstractmethod
    async def revoke_session(self, digest: bytes, user_id: int, reason: str) -> None:
        """End one session; other nodes sharing the store are told (``listen_revocations``)."""

    # Sessions and devices a user sees (docs/protocol.md, "Sessions and devices")
    async def user_sessions(self, user_id: int) -> list[SessionEntry]:
        """The user's sessions, oldest first."""
        rows = await self._fetch(device_sql(self._sql).user_sessions, (user_id,))
        return [to_session_entry(row) for row in rows]

    async def user_devices(self, user_id: int) -> list[Device]:
        """The user's devices, the last used first."""
        rows = await self._fetch(device_sql(self._sql).user_devices, (user_id,))
        return [to_device(row) for row in rows]

    async def device(self, user_id: int, hash_code: int) -> Device | None:
        row = await self._first(device_sql(self._sql).device, user_id, hash_code)
        return to_device(row) if row else None

    async def device_code_live(self, hash_code: int, now: float, tries: int) -> bool:
        """Whether a device with ``hash_code`` has a live code with a try left (a read)."""
        live = await self._first(device_sql(self._sql).live_code, hash_code, now, tries)
        return live is not None

    @abc.abstractmethod
    async def end_sessions(
        self,
        user_id: int,
        reason: str,
        audit: AuditEntry,
        *,
        only: bytes | None = None,
        keep: bytes | None = None,
        authority: Authority | None = None,
    ) -> list[bytes]:
        """End the user's session ``only``, or every one but ``keep``, with ``audit``, in one
        transaction; other nodes are told (``reason``). The digests ended (none: nothing
        written, no audit row). With ``authority``, CallerGone when it no longer holds."""

    @abc.abstractmethod
    async def issue_device_code(self, issue: DeviceCodeIssue) -> None:
        """Store a device's code (voiding its earlier one and its tries), queue its mail and
        write its audit row, in one transaction."""

    @abc.abstractmethod
    async def register_device(
        self, hash_code: int, digest: bytes, now: float, tries: int, until: float, audit: AuditEntry
    ) -> int | None:
        """One try at a device's code, in one transaction: when ``digest`` is the live code's
        and its own row has a try left, the device trusted until ``until`` and the code spent,
        with ``audit`` (its actor and target the device's user); else the try counted. The
        device's user, or None. Of racing tries with one code, one wins."""

    # API keys (docs/rules.md, "API keys")
    @abc.abstractmethod
    async def add_api_key(
        self,
        key: ApiKey,
        max_keys: int,
        audit: AuditEntry,
        *,
        authority: Authority | None = None,
    ) -> bool:
        """Store a new key (its secret already sealed) with ``audit``, in one transaction;
        False (nothing written) when its user holds ``max_keys`` keys already. Ordered against
        a reset of the key's user: a key the reset would revoke is never written after it."""

    @abc.abstractmethod
    async def remove_api_key(
        self,
        user_id: int,
        key: str,
        reason: str,
        audit: AuditEntry,
        *,
        authority: Authority | None = None,
    ) -> list[bytes] | None:
        """Delete the user's key and every session opened with it (other nodes are told, with
        ``reason``), with ``audit``, in one transaction. Returns those sessions' digests, or
        None (nothing written) when the user has no such key."""

    # Counted events: request limits, failed attempts
    @abc.abstractmethod
    async def reserve(self, claims: Sequence[Claim], now: float) -> list[int] | None:
        """Record one event for every claim, unless any of them is at its limit: all or none,
        atomically (concurrent callers cannot both take the last slot, on any node). Returns
        how many events each claim's counter held before, or None when refused."""

    @abc.abstractmethod
    async def admit(self, claims: Sequence[Claim], now: float) -> Admission:
        """A login attempt's slots: one event for every claim, marked in flight, unless a
        counter is full (:func:`.plans.admission` decides): all or none, atomically, as
        ``reserve``. Its slots end with ``release`` (it did not count) or ``settle`` (a
        failure)."""

    @abc.abstractmethod
    async def settle(self, slots: Sequence[Slot]) -> None:
        """The attempts these slots (taken by ``admit``) counted failed: they stay, as
        failures."""

    @abc.abstractmethod
    async def release(self, kind: str, key: str, at: float) -> None:
        """Give back one reserved event (the attempt it counted turned out not to count)."""

    # Reset codes (keyed by the SHA-256 of the code)
    @abc.abstractmethod
    async def issue_code(self, issue: CodeIssue) -> bool:
        """Void the user's pending codes, store the new one and queue its mail, at once. With
        ``limit``, one slot of it is reserved in the same transaction first; False (nothing
        written) when it is used up."""

    @abc.abstractmethod
    async def check_code(
        self,
        digest: bytes | None,
        user_id: int | None,
        now: float,
        invalid: Claim,
        attempt: Claim | None = None,
    ) -> tuple[Outcome, ResetCode | None]:
        """Look a code up for a client, in one transaction: THROTTLED when the address is at
        its ``invalid`` limit (nothing looked up); INVALID when the code is missing, not
        pending, expired or not ``user_id``'s (one ``invalid`` event recorded); LOCKED when an
        ``attempt`` slot was asked for and none is left; else DONE with the code (and the slot
        reserved). The slot is taken while the code is still pending, so once a success has
        consumed the code (clearing the slots) no new attempt can check an answer for it."""

    @abc.abstractmethod
    async def complete_reset(self, reset: PasswordReset) -> Outcome:
        """Consume the code and set the password at once, re-checking in the same transaction:
        INVALID when the code is no longer pending for that user or has expired (of racing
        calls, one wins), LOCKED when the user is locked, REPLAYED when ``totp_step`` is not
        newer than the last accepted; nothing changes then. On DONE the password version moves
        on, every code, session and pending second step of the user is revoked (and with
        ``revoke_api_keys`` every API key), its failure count cleared, and other nodes are
        told."""

    # Mail outbox
    @abc.abstractmethod
    async def claim_mail(self, now: float, lease: float, limit: int) -> list[OutboxRow]:
        """Take due queued messages for delivery; a claimed message is not due again until
        ``lease`` seconds have passed (so a crashed worker's claim expires)."""

    async def start_serving(self, now: float) -> int:
        """Called once by a node before its outbox starts. A store only one node serves
        (SQLite) makes sure this is the only one (StoreError otherwise) and takes back the mail
        claims a dead process left (:meth:`reclaim_mail`), returning how many; a store shared
        by nodes does nothing (claims there expire by their lease)."""
        return 0

    @abc.abstractmethod
    async def hand_back_mail(self, mail_ids: Sequence[int], now: float) -> None:
        """A stopping node's claims on these messages, still undelivered, given back: due at
        once, for any node (not after their lease)."""

    async def reclaim_mail(self, now: float) -> int:
        """Make every claimed, undelivered message due at once: for a single node at start,
        when no other process can hold a claim (a dead one's would otherwise wait for its
        lease). How many were taken back. A store shared by nodes keeps the leases (0)."""
        return 0

    @abc.abstractmethod
    async def mails_delivered(
        self, mail_ids: Sequence[int], now: float, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Mark these messages delivered and erase their sealed parts, with ``audit``, in one
        transaction."""

    @abc.abstractmethod
    async def mail_failed(
        self, mail_id: int, now: float, error: str, retry_at: float | None
    ) -> None:
        """Record a failed attempt; ``retry_at`` None gives up (state failed, sealed erased)."""

    # Audit
    @abc.abstractmethod
    async def audit(self, entries: list[AuditEntry], now: float) -> None: ...

    async def audit_rows(
        self,
        *,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 100,
        oldest_first: bool = False,
        recorded_as: str | None = None,
    ) -> list[AuditRow]:
        """Newest first (unless ``oldest_first``); ``user`` matches the target's or the actor's
        username, or a target name (with ``recorded_as``, that one too: how a name that names
        no user is recorded, ``engine.names.unknown_name``); ``since``/``until`` bound the
        time."""
        await self._audit_settled()
        statement, args = q.audit_query(
            user=self._sql.text(user),
            since=since,
            until=until,
            limit=limit,
            oldest_first=oldest_first,
            recorded_as=recorded_as,
        )
        rows = await self._fetch(self._sql.placeholders(statement), tuple(args))
        return [q.to_audit(row) for row in rows]

    async def _audit_settled(self) -> None:
        """Before the trail is read: a store that links audit rows after commit links what is
        pending here, so a reader sees every committed decision (nothing to do by default)."""
        return None

    async def verify_audit(self) -> AuditCheck:
        """Walk the whole hash chain, checking each row under the store's audit key."""
        return check_chain(await self.audit_rows(limit=None, oldest_first=True), self._audit_key)

    # The key ring (docs/operations.md, "Rotating the service key")
    async def sealed_batch(
        self, column: SealedColumn, current: bytes, after: object, limit: int
    ) -> list[Row]:
        """Up to ``limit`` rows of ``column`` after key ``after`` whose value is not sealed
        under the key ``current`` (a ``keyring.sealed_prefix``) names: ``pk, fields, value``."""
        statement = self._sql.placeholders(batch_sql(column))
        return await self._fetch(statement, (len(current), current, after, limit))

    async def sealed_count(self, column: SealedColumn, prefix: bytes, magic: bytes | None) -> int:
        """How many values of ``column`` the key ``prefix`` names sealed; with ``magic``, also
        those sealed before key ids (the key being the ring's legacy key)."""
        statement = self._sql.placeholders(count_sql(column, legacy=magic is not None))
        args: tuple[object, ...] = (len(prefix), prefix)
        if magic is not None:
            args += (len(magic), magic)
        rows = await self._fetch(statement, args)  # a count over the whole table
        return int(rows[0][0]) if rows else 0

    @abc.abstractmethod
    async def reseal(self, column: SealedColumn, pk: object, old: bytes, new: bytes) -> bool:
        """Replace ``old`` by ``new`` in row ``pk`` of ``column``; False (nothing changed) when
        the row no longer holds ``old`` (changed or gone meanwhile)."""

    @abc.abstractmethod
    async def take_key(self, binding: keys.KeyBinding, audit_key: ChainKeys) -> bool:
        """Record ``binding``'s current key as the store's and chain new audit rows with
        ``audit_key`` (keys.advance_plan); False, changing nothing, when the store's current
        key is not in the ring (it is out of date)."""

    @abc.abstractmethod
    async def prune(self, events_before: float, sessions_idle_since: float) -> int:
        """Delete what no rule looks at any more: counted events older than ``events_before``,
        sessions idle since before ``sessions_idle_since``, and reset codes used, voided or
        expired before ``events_before``. Returns how many rows went."""

    # Several nodes on one store (no-ops for a store only one process uses)
    async def listen_revocations(self, callback: Callable[[Revocation], None]) -> None:
        """Call ``callback`` whenever sessions end on another node sharing this store (a reset,
        a LogOut), so this node's connections holding them are logged off too, within a second.
        A node's own revocations are not reported: the engine tells its own node directly."""
        return None
