"""The store interface and its records. No SQL here: each implementation brings its own.

Every write method is one transaction: when it returns, its effect is committed. Records that
hold a hash or a sealed secret redact it from their repr.
"""

from __future__ import annotations

import abc
import enum
import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

__all__ = [
    "RESET_FAILURE",
    "StoreError",
    "NewUser",
    "User",
    "SecurityQuestion",
    "Session",
    "ResetCode",
    "MailItem",
    "OutboxRow",
    "AuditEntry",
    "AuditRow",
    "AuditCheck",
    "Claim",
    "Outcome",
    "Revocation",
    "check_chain",
    "chain_hash",
    "checked_audit_key",
    "Store",
    "username_key",
    "is_postgres_url",
    "sqlite_path",
]


def is_postgres_url(url: str) -> bool:
    """Whether a ``--db`` value names PostgreSQL (anything else is a SQLite file)."""
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str) -> str:
    """The file a ``--db`` value names: a path, or ``sqlite:PATH``."""
    return url.removeprefix("sqlite://").removeprefix("sqlite:")


def username_key(username: str) -> str:
    """How usernames compare and are counted: trimmed and case-folded."""
    return username.strip().casefold()


# The event kind counting a user's failed ResetPassword2 attempts: a success or an unlock clears it.
RESET_FAILURE = "reset-failure"


class StoreError(Exception):
    """The store refused a write for a reason the caller can state (e.g. a duplicate username)."""


class NewUser(msgspec.Struct, kw_only=True):
    username: str
    email: str
    password_hash: str
    oms_id: int = 1
    permissions: tuple[str, ...] = ()
    accounts: tuple[int, ...] = ()
    master: bool = False
    auth_source: str = "native"
    active: bool = True
    email_verified: bool = False
    questions: tuple[tuple[str, str], ...] = ()  # (question, Argon2id hash of the answer)

    def __repr__(self) -> str:
        return f"NewUser(username={self.username!r}, <hashes redacted>)"


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    username: str
    email: str
    email_verified: bool
    oms_id: int
    account_id: int | None
    password_hash: str
    totp_sealed: bytes | None
    auth_source: str
    active: bool
    master: bool
    last_login: float | None
    locked_until: float | None
    permissions: frozenset[str]
    accounts: frozenset[int]
    # Bumped by every password change: a session is only created for the version its password
    # check read, so a login racing a reset opens nothing.
    password_version: int = 0
    # The last RFC 6238 time step accepted for this user: a code is never accepted twice.
    totp_last_step: int | None = None

    def __repr__(self) -> str:
        return f"User(id={self.id}, username={self.username!r}, <secrets redacted>)"

    def locked(self, now: float) -> bool:
        return self.locked_until is not None and self.locked_until > now

    @property
    def uses_totp(self) -> bool:
        return self.totp_sealed is not None


class SecurityQuestion(msgspec.Struct, frozen=True):
    id: int
    question: str
    answer_hash: str

    def __repr__(self) -> str:
        return f"SecurityQuestion(id={self.id}, question={self.question!r})"


class Session(msgspec.Struct, frozen=True):
    user_id: int
    created_at: float
    last_seen: float


class Claim(msgspec.Struct, frozen=True):
    """One slot of a limit: at most ``limit`` events of ``kind`` and ``key`` within ``window``
    seconds. Reserving it records the event before the attempt it counts is checked."""

    kind: str
    key: str
    window: float
    limit: int


class Outcome(enum.Enum):
    """How a write that re-checks its preconditions in its own transaction ended."""

    DONE = "done"
    INVALID = "invalid"  # the code is no longer pending (another call won), or expired
    LOCKED = "locked"  # the user was locked meanwhile
    STALE = "stale"  # the password changed since the check that led here
    REPLAYED = "replayed"  # the TOTP time step was accepted for this user already
    THROTTLED = "throttled"  # the caller's address is at its limit


class Revocation(msgspec.Struct, frozen=True):
    """Sessions ended on some node: one session (``session_digest``) or all of a user's.
    ``reason`` is the LogoutEvent's Reason (SPEC section 1)."""

    user_id: int
    reason: str
    session_digest: bytes | None = None


class ResetCode(msgspec.Struct, frozen=True):
    user_id: int
    created_at: float
    expires_at: float
    state: str  # pending | used | void


class MailItem(msgspec.Struct, frozen=True, kw_only=True):
    """A message to queue. ``public`` is what templates may show anyone who reads the store;
    ``sealed`` (already encrypted by the caller) holds what must stay secret, e.g. the link."""

    kind: str
    recipient: str
    user_id: int | None
    public: dict[str, Any]
    sealed: bytes | None = None


class OutboxRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    kind: str
    recipient: str
    user_id: int | None
    public: dict[str, Any]
    sealed: bytes | None
    attempts: int
    created_at: float

    def __repr__(self) -> str:
        return f"OutboxRow(id={self.id}, kind={self.kind!r}, attempts={self.attempts})"


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One decision. Never a password, code, answer, TOTP secret or token."""

    action: str
    actor_id: int | None = None
    target_id: int | None = None
    target_name: str | None = None
    source: str | None = None
    detail: str | None = None


class AuditRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    at: float
    action: str
    actor_id: int | None
    target_id: int | None
    target_name: str | None
    source: str | None
    detail: str | None
    prev_hash: str = ""
    hash: str = ""

    def expected_hash(self, key: bytes) -> str:
        """What ``hash`` must be: HMAC-SHA256 under the audit key (:func:`chain_hash`) over the
        previous row's hash and this row's fields, so an edited row, or a deleted one before it,
        breaks the chain from there on, and without the key it cannot be re-hashed."""
        return chain_hash(
            key,
            self.prev_hash,
            self.id,
            self.at,
            self.action,
            self.actor_id,
            self.target_id,
            self.target_name,
            self.source,
            self.detail,
        )


def chain_hash(key: bytes, prev_hash: str, *fields: object) -> str:
    """One link of the audit chain: HMAC-SHA256 under ``key`` (``crypto.audit_key``, derived
    from the service key) over the canonical JSON of the previous hash and the row's fields."""
    return hmac.new(key, _canonical.encode([prev_hash, *fields]), hashlib.sha256).hexdigest()


def checked_audit_key(key: bytes) -> bytes:
    """A store's audit key, refused when it cannot be one (e.g. empty)."""
    if not isinstance(key, bytes) or len(key) != 32:
        raise ValueError("the audit key must be 32 bytes (crypto.audit_key of the service key)")
    return key


_canonical = msgspec.json.Encoder()


class AuditCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of walking the audit chain."""

    rows: int
    last_hash: str
    bad_id: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.bad_id is None


def check_chain(rows: Iterable[AuditRow], key: bytes) -> AuditCheck:
    """Walk rows in id order; the first row whose link or hash (under ``key``) does not hold
    is reported."""
    prev, count, last_id = "", 0, 0
    for row in rows:
        if row.prev_hash != prev:
            reason = (
                "a row before it was deleted or edited"
                if row.id != last_id + 1
                else ("its link to the previous row does not match")
            )
            return AuditCheck(rows=count, last_hash=prev, bad_id=row.id, reason=reason)
        if row.hash != row.expected_hash(key):
            return AuditCheck(
                rows=count,
                last_hash=prev,
                bad_id=row.id,
                reason="its content was changed after it was written",
            )
        prev, count, last_id = row.hash, count + 1, row.id
    return AuditCheck(rows=count, last_hash=prev)


class Store(abc.ABC):
    """What the engine needs from persistence."""

    # The audit chain's HMAC key (crypto.audit_key), given to each store at construction.
    _audit_key: bytes

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def healthy(self) -> bool:
        """True when a trivial query answers."""

    # Users
    @abc.abstractmethod
    async def create_user(self, user: NewUser, audit: AuditEntry | None = None) -> int:
        """Insert a user with its accounts, permissions and questions; StoreError on a
        duplicate username (compared case-insensitively)."""

    @abc.abstractmethod
    async def set_totp(self, user_id: int, sealed: bytes | None) -> None: ...

    @abc.abstractmethod
    async def user_by_id(self, user_id: int) -> User | None: ...

    @abc.abstractmethod
    async def user_by_name(self, username: str) -> User | None:
        """Case-insensitive, after trimming."""

    @abc.abstractmethod
    async def list_users(self) -> list[User]: ...

    @abc.abstractmethod
    async def security_questions(self, user_id: int) -> list[SecurityQuestion]: ...

    @abc.abstractmethod
    async def set_lock(self, user_id: int, until: float | None, audit: AuditEntry) -> None:
        """Lock a user until ``until`` (None unlocks and clears the failure count)."""

    # Sessions (keyed by the SHA-256 of the token)
    @abc.abstractmethod
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
        """A successful login, in one transaction: the session is created only while the user's
        password is still ``password_version`` (else STALE) and, with ``totp_step``, only if
        that step is newer than the last accepted (else REPLAYED; it becomes the last). Either
        way ``pending`` (a second step) ends, the ``release``d reservations go, and on DONE the
        ``clear``ed counters go, the login time is recorded and ``audit`` written."""

    @abc.abstractmethod
    async def begin_second_step(
        self, digest: bytes, user_id: int, password_version: int, now: float
    ) -> None:
        """Remember a login that passed its password step and waits for a TOTP code."""

    @abc.abstractmethod
    async def second_step_attempt(
        self, digest: bytes, now: float, max_age: float, max_attempts: int
    ) -> tuple[int, int] | None:
        """Reserve one attempt at a pending second step: ``(user_id, password_version)``, or
        None when it does not exist, is older than ``max_age`` or has used ``max_attempts``."""

    @abc.abstractmethod
    async def end_second_step(self, digest: bytes) -> None: ...

    @abc.abstractmethod
    async def session(self, digest: bytes) -> Session | None: ...

    @abc.abstractmethod
    async def touch_session(self, digest: bytes, now: float) -> bool:
        """Record activity; False when the session no longer exists (revoked elsewhere)."""

    @abc.abstractmethod
    async def revoke_session(self, digest: bytes, user_id: int, reason: str) -> None:
        """End one session; other nodes sharing the store are told (``listen_revocations``)."""

    # Counted events: request limits, failed attempts
    @abc.abstractmethod
    async def reserve(self, claims: Sequence[Claim], now: float) -> list[int] | None:
        """Record one event for every claim, unless any of them is at its limit: all or none,
        atomically (concurrent callers cannot both take the last slot, on any node). Returns
        how many events each claim's counter held before, or None when refused."""

    async def take(self, kind: str, key: str, now: float, window: float, limit: int) -> bool:
        """Reserve a single claim; True when recorded."""
        return await self.reserve([Claim(kind, key, window, limit)], now) is not None

    @abc.abstractmethod
    async def release(self, kind: str, key: str, at: float) -> None:
        """Give back one reserved event (the attempt it counted turned out not to count)."""

    @abc.abstractmethod
    async def add_event(self, kind: str, key: str, now: float) -> int:
        """Record an event; return how many of that kind and key exist now."""

    @abc.abstractmethod
    async def count_events(self, kind: str, key: str, since: float) -> int: ...

    @abc.abstractmethod
    async def clear_events(self, kind: str, key: str) -> None: ...

    # Reset codes (keyed by the SHA-256 of the code)
    @abc.abstractmethod
    async def issue_code(
        self,
        user_id: int,
        digest: bytes,
        now: float,
        expires_at: float,
        mail: MailItem,
        audit: list[AuditEntry],
    ) -> None:
        """Void the user's pending codes, store the new one and queue its mail, at once."""

    @abc.abstractmethod
    async def reset_code(self, digest: bytes) -> ResetCode | None: ...

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
        """Consume the code and set the password at once, re-checking in the same transaction:
        INVALID when the code is no longer pending for that user or has expired (of racing
        calls, one wins), LOCKED when the user is locked, REPLAYED when ``totp_step`` is not
        newer than the last accepted; nothing changes then. On DONE the password version moves
        on, every code, session and pending second step of the user is revoked, its failure
        count cleared, and other nodes are told."""

    # Mail outbox
    @abc.abstractmethod
    async def claim_mail(self, now: float, lease: float, limit: int) -> list[OutboxRow]:
        """Take due queued messages for delivery; a claimed message is not due again until
        ``lease`` seconds have passed (so a crashed worker's claim expires)."""

    @abc.abstractmethod
    async def mail_delivered(self, mail_id: int, now: float) -> None:
        """Mark delivered and erase the sealed part."""

    @abc.abstractmethod
    async def mail_failed(
        self, mail_id: int, now: float, error: str, retry_at: float | None
    ) -> None:
        """Record a failed attempt; ``retry_at`` None gives up (state failed, sealed erased)."""

    @abc.abstractmethod
    async def mail_counts(self) -> dict[str, int]:
        """Messages by state: queued, sent, failed."""

    # Audit
    @abc.abstractmethod
    async def audit(self, entries: list[AuditEntry], now: float) -> None: ...

    @abc.abstractmethod
    async def audit_rows(
        self,
        *,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 100,
        oldest_first: bool = False,
    ) -> list[AuditRow]:
        """Newest first (unless ``oldest_first``); ``user`` matches the target's or the actor's
        username; ``since``/``until`` bound the time."""

    async def verify_audit(self) -> AuditCheck:
        """Walk the whole hash chain, checking each row under the store's audit key."""
        return check_chain(await self.audit_rows(limit=None, oldest_first=True), self._audit_key)

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

    async def bind_key(self, fingerprint: str) -> None:
        """Remember the service key's fingerprint on first use; StoreError when a node comes
        with a different key (it could not open what the others sealed)."""
        return None
