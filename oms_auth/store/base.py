"""The store interface and its records. No SQL here: each implementation brings its own.

Every write method is one transaction: when it returns, its effect is committed. Records that
hold a hash or a sealed secret redact it from their repr.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Iterable
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
    "check_chain",
    "chain_hash",
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

    def __repr__(self) -> str:
        return f"User(id={self.id}, username={self.username!r}, <secrets redacted>)"

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

    def expected_hash(self) -> str:
        """What ``hash`` must be: SHA-256 over the previous row's hash and this row's fields, so
        an edited row, or a deleted one before it, breaks the chain from there on."""
        return chain_hash(
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


def chain_hash(prev_hash: str, *fields: object) -> str:
    return hashlib.sha256(_canonical.encode([prev_hash, *fields])).hexdigest()


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


def check_chain(rows: Iterable[AuditRow]) -> AuditCheck:
    """Walk rows in id order; the first row whose link or hash does not hold is reported."""
    prev, count, last_id = "", 0, 0
    for row in rows:
        if row.prev_hash != prev:
            reason = (
                "a row before it was deleted or edited"
                if row.id != last_id + 1
                else ("its link to the previous row does not match")
            )
            return AuditCheck(rows=count, last_hash=prev, bad_id=row.id, reason=reason)
        if row.hash != row.expected_hash():
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
    async def record_login(self, user_id: int, now: float) -> None: ...

    @abc.abstractmethod
    async def set_lock(self, user_id: int, until: float | None, audit: AuditEntry) -> None:
        """Lock a user until ``until`` (None unlocks and clears the failure count)."""

    # Sessions (keyed by the SHA-256 of the token)
    @abc.abstractmethod
    async def create_session(self, digest: bytes, user_id: int, now: float) -> None: ...

    @abc.abstractmethod
    async def session(self, digest: bytes) -> Session | None: ...

    @abc.abstractmethod
    async def touch_session(self, digest: bytes, now: float) -> bool:
        """Record activity; False when the session no longer exists (revoked elsewhere)."""

    @abc.abstractmethod
    async def revoke_session(self, digest: bytes) -> None: ...

    # Counted events: request limits, failed attempts
    @abc.abstractmethod
    async def take(self, kind: str, key: str, now: float, window: float, limit: int) -> bool:
        """Record an event unless ``limit`` of them already happened within ``window``;
        True when recorded. Atomic: concurrent callers cannot both take the last one."""

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
    async def complete_reset(
        self,
        user_id: int,
        digest: bytes,
        password_hash: str,
        now: float,
        mail: MailItem,
        audit: list[AuditEntry],
    ) -> bool:
        """Consume the code and set the password at once. False (and nothing changed) when the
        code is no longer pending for that user or has expired: of racing calls, one wins.
        On success every code and session of the user is revoked and its lock cleared."""

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
        """Walk the whole hash chain."""
        return check_chain(await self.audit_rows(limit=None, oldest_first=True))

    @abc.abstractmethod
    async def prune(self, events_before: float, sessions_idle_since: float) -> int:
        """Delete what no rule looks at any more: counted events older than ``events_before``,
        sessions idle since before ``sessions_idle_since``, and reset codes used, voided or
        expired before ``events_before``. Returns how many rows went."""

    # Several nodes on one store (no-ops for a store only one process uses)
    async def listen_password_changed(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(user_id)`` whenever a reset completed on another node sharing this
        store, so that node's connections of the user are logged off too. A node's own resets
        are not reported: the engine logs those off itself (``Deps.password_changed``)."""
        return None

    async def bind_key(self, fingerprint: str) -> None:
        """Remember the service key's fingerprint on first use; StoreError when a node comes
        with a different key (it could not open what the others sealed)."""
        return None
