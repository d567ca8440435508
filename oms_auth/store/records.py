"""The store's records: the values that cross the :class:`~.base.Store` interface.

Small msgspec Structs, declared once, with no behaviour beyond a derived property or two. Records
that hold a hash or a sealed secret redact it from their repr. A reset code's state is a
:class:`~.codes.CodeState` (its moves are in :mod:`.codes`); the audit chain's computation is in
:mod:`.audit`, which :class:`AuditRow` uses to say what its hash must be.
"""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import icu  # type: ignore[import-untyped,unused-ignore]
import msgspec

from .codes import CodeState

__all__ = [
    "DeviceSeen",
    "Factors",
    "RecoveryUse",
    "RESET_FAILURE",
    "NO_PASSWORD",
    "StoreError",
    "CallerGone",
    "username_key",
    "username_skeleton",
    "same_email",
    "SKELETON_VERSION",
    "UsernameTaken",
    "UsernameConfusable",
    "NewUser",
    "ImportItem",
    "Imported",
    "User",
    "SecurityQuestion",
    "Session",
    "ApiKey",
    "Claim",
    "Slot",
    "Reservation",
    "Room",
    "Admission",
    "IN_FLIGHT_SECONDS",
    "Authority",
    "AccountChange",
    "Outcome",
    "SessionOpening",
    "PendingStep",
    "Revocation",
    "ResetCode",
    "CodeIssue",
    "PasswordReset",
    "MailItem",
    "MailState",
    "OutboxRow",
    "AuditEntry",
    "AuditRow",
]


def username_key(username: str) -> str:
    """How usernames compare and are counted: trimmed and case-folded."""
    return username.strip().casefold()


# The full Unicode confusables data (TR39), as the ICU library ships it: one checker, built once.
# getSkeleton is a const call on it, safe from any thread.
_SPOOF = icu.SpoofChecker()
# What skeletons are computed with: a store recomputes its users' skeletons at open when this
# differs from what it recorded, so names added before are compared with the same data (an ICU
# upgrade brings newer confusables). Bump the number when username_skeleton changes.
SKELETON_VERSION = f"username_skeleton 2, ICU {icu.ICU_VERSION}"
# Nonspacing and enclosing marks (every one, whatever its combining class): a name that differs
# from another only by marks on its letters looks like it.
_MARKS = icu.UnicodeSet("[[:Mn:][:Me:]]")
_MARKS.freeze()  # read-only from here: safe to share between threads
# Separators people do not see the difference between: ``trader_1`` reads as ``trader1``.
_SEPARATORS = re.compile(r"[\s_\-.]+")


def same_email(stored: str, given: str) -> bool:
    """Whether an imported user's email is the one a user of its name already has."""
    return stored.strip().casefold() == given.strip().casefold()


# Each ASCII character's skeleton (ICU's, so it cannot drift from the full path), and that
# case-folded, for the ASCII names whose skeletons stay ASCII: those holding none of _ASCII_OUT.
_ASCII = {c: _SPOOF.getSkeleton(0, chr(c)) for c in range(128)}
_ASCII_FOLDED = {c: skeleton.casefold() for c, skeleton in _ASCII.items()}
_ASCII_OUT = frozenset(chr(c) for c, skeleton in _ASCII.items() if not skeleton.isascii())


@functools.lru_cache(maxsize=8192)  # a name is looked at several times as it is added
def username_skeleton(name: str) -> str:
    """What a name looks like: two names with the same skeleton look alike.

    The Unicode TR39 skeleton (ICU's full confusables data, so ``\u0585scar1`` with an
    Armenian oh, ``0SCARl`` and ``oscar1`` are all ``oscarl``), case-folded, with nonspacing
    and enclosing marks and separators dropped, then the skeleton again (folding and dropping
    can make new confusables). Invisible characters are not handled here: usernames holding
    any are refused before they reach a store (``oms_auth.engine.names``)."""
    if name.isascii() and _ASCII_OUT.isdisjoint(name):
        # The same steps, each character's skeleton looked up in a table: ASCII is its own
        # NFKC, NFD and marks-free form, and TR39 maps a text character by character. ICU
        # took about 3 microseconds a call, an import's costliest check of a row.
        once = _SEPARATORS.sub("", name.translate(_ASCII_FOLDED))
        return _SEPARATORS.sub("", once.translate(_ASCII))
    once = _SPOOF.getSkeleton(0, unicodedata.normalize("NFKC", name)).casefold()
    # ASCII (most names) holds no marks and is its own NFD: nothing to drop
    bare = (
        once
        if once.isascii()
        else "".join(c for c in unicodedata.normalize("NFD", once) if c not in _MARKS)
    )
    return _SEPARATORS.sub("", _SPOOF.getSkeleton(0, _SEPARATORS.sub("", bare)))


# The event kind counting a user's failed ResetPassword2 attempts: a success or an unlock clears it.
RESET_FAILURE = "reset-failure"
# The password hash of an invited user who has not set a password yet: nothing verifies
# against it (a login costs the same as for a missing user), so it cannot log in.
NO_PASSWORD = ""


class StoreError(Exception):
    """The store refused a write for a reason the caller can state (e.g. a duplicate username)."""


class UsernameTaken(StoreError):
    """The username (compared trimmed and case-folded) is another user's."""


class UsernameConfusable(StoreError):
    """The username looks like another user's (the same :func:`username_skeleton`)."""


class CallerGone(StoreError):
    """A write made for a caller whose :class:`Authority` no longer holds in the write's own
    transaction (its session ended, its password changed, or it lost the permission the
    decision rested on): nothing was written."""


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
    locale: str | None = None  # the language of its mail; None: the deployment's default
    created_at: float | None = None  # when the user was made (None: a record not read back)

    def __repr__(self) -> str:
        return f"NewUser(username={self.username!r}, <hashes redacted>)"


class ImportItem(msgspec.Struct, frozen=True, kw_only=True):
    """One user of an import batch (``Store.import_users``): written whole or not at all.
    ``seal_totp`` seals its TOTP secret for the id the store gives it (the secret never
    reaches the store in the clear); ``audit`` is written with that id."""

    user: NewUser
    audit: AuditEntry
    seal_totp: Callable[[int], bytes] | None = None
    # username_key and username_skeleton of user.username, when the caller has them already
    # (an import's reading process computes them to compare the file's names)
    names: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"ImportItem(username={self.user.username!r})"


class Imported(enum.Enum):
    """What became of an :class:`ImportItem`."""

    DONE = "imported"
    ALREADY = "already there"  # a user of that name and email exists (an earlier run)
    TAKEN = "username taken"  # by a user with another email
    LOOKALIKE = "looks like an existing username"


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
    locale: str | None = None  # the language of its mail; None: the deployment's default
    created_at: float | None = None  # when the user was made (None: a record not read back)

    def __repr__(self) -> str:
        return f"User(id={self.id}, username={self.username!r}, <secrets redacted>)"

    def locked(self, now: float) -> bool:
        return self.locked_until is not None and self.locked_until > now

    @property
    def uses_totp(self) -> bool:
        return self.totp_sealed is not None

    @property
    def invited(self) -> bool:
        """Created without a password, and none set yet."""
        return self.password_hash == NO_PASSWORD


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
    # The API key this session was opened with (an API-key login), None for a password login:
    # such a session cannot change account security (docs/rules.md, "API keys").
    api_key: str | None = None


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A user's API key (docs/rules.md, "API keys"). ``key`` is the public APIKey; the
    APISecret is held only sealed with the service key (``secret_sealed``)."""

    key: str
    user_id: int
    permissions: tuple[str, ...]
    secret_sealed: bytes
    created_at: float

    def __repr__(self) -> str:
        return f"ApiKey(key={self.key!r}, user_id={self.user_id}, <secret redacted>)"


class Claim(msgspec.Struct, frozen=True):
    """One slot of a limit: at most ``limit`` events of ``kind`` and ``key`` within ``window``
    seconds. Reserving it records the event before the attempt it counts is checked."""

    kind: str
    key: str
    window: float
    limit: int


class Slot(NamedTuple):
    """One event recorded under a limit (a slot a :class:`Claim` took), to give back with
    ``Store.release`` when the attempt it counted turns out not to count."""

    kind: str
    key: str
    at: float


class Reservation(msgspec.Struct, frozen=True):
    """A login attempt's two slots, taken before its secret is checked: one under the
    per-username limit, one under the per-address limit."""

    user: Slot
    source: Slot

    def release_all(self) -> tuple[Slot, ...]:
        """Both slots: the attempt does not count at all (a refusal, a second step to come)."""
        return (self.user, self.source)

    def keep_user_slot(self) -> tuple[Slot, ...]:
        """The per-address slot only: a login that succeeds gives back its address's slot,
        while the per-username count is cleared in the login's own transaction."""
        return (self.source,)


# An attempt's event still marked in flight this long after it was taken is counted as a
# failure: its node died while checking it (a check takes well under a second).
IN_FLIGHT_SECONDS = 60.0


class Room(enum.Enum):
    """What a limit's counters leave for one more attempt (docs/rules.md, "Fair limits")."""

    FREE = "free"  # a slot was taken
    FAILURES = "failures"  # failures used a counter up: refused
    IN_FLIGHT = "in-flight"  # every slot left is held by an attempt still being checked: wait


class Admission(NamedTuple):
    """``Store.admit``'s answer: the room found, each counter's failures within its window
    (before this attempt), and the counter that is full (None when FREE)."""

    room: Room
    failures: tuple[int, ...]
    full: Claim | None = None


class Authority(msgspec.Struct, frozen=True, kw_only=True):
    """What a write made for a caller re-checks of it in its own transaction, so a decision
    taken on a caller's power cannot land after that power is gone: the session the request
    came on still exists (a LogOut, a forced logoff, a removed key or a reset ends it), the
    user's password is still ``password_version`` (the version that session was opened for),
    and, with ``permission``, the user still holds it. The store raises :class:`CallerGone`
    otherwise, and writes nothing."""

    user_id: int
    session: bytes  # the SHA-256 digest of the session's token
    password_version: int
    permission: str | None = None

    def __repr__(self) -> str:
        return f"Authority(user_id={self.user_id}, permission={self.permission!r})"


class AccountChange(msgspec.Struct, frozen=True, kw_only=True):
    """A change to a user's account security, written in one transaction with its audit row
    and the notice mailed to the user (``Store.change_account``). Each field left at its
    default changes nothing.

    ``password_version`` is the version the caller's check read (a password, or the session's
    user): a password changed meanwhile makes the change STALE (None: whatever it is now).
    ``totp_step`` is a time step just accepted: not newer than the last accepted makes it
    REPLAYED."""

    user_id: int
    password_version: int | None
    audit: AuditEntry
    mail: MailItem | None = None
    totp_step: int | None = None
    # Enable (a sealed secret) or disable (None) TOTP; only from the other state, else INVALID.
    set_totp: bool = False
    totp_sealed: bytes | None = None
    # Replace the security questions: (question, Argon2id hash of the answer).
    questions: tuple[tuple[str, str], ...] | None = None
    # End every session and pending second step of the user, on every node, with this reason.
    end_sessions: str | None = None
    # The caller's authority, re-checked in the change's transaction (CallerGone otherwise).
    authority: Authority | None = None
    # A new set of recovery codes (their keyed digests) voiding the earlier set; only while
    # TOTP is on, else INVALID (``()``: the set voided, whatever TOTP is).
    recovery_codes: tuple[bytes, ...] | None = None
    # A recovery code used as the proof of this change (REPLAYED when another use took it).
    recovery: RecoveryUse | None = None

    def __repr__(self) -> str:
        return f"AccountChange(user_id={self.user_id}, action={self.audit.action!r})"


class Factors(msgspec.Struct, frozen=True):
    """A user's second factors as a reset's checks read them: the sealed TOTP secret and the
    security questions (question, answer hash). The reset's transaction puts them back if an
    old-password session changed them while the reset was checking (docs/rules.md, "Account
    security changes"): a reset racing an enrolment or new questions leaves nothing behind."""

    totp_sealed: bytes | None
    questions: tuple[tuple[str, str], ...]

    def __repr__(self) -> str:
        return f"Factors(totp={self.totp_sealed is not None}, questions={len(self.questions)})"


class RecoveryUse(msgspec.Struct, frozen=True, kw_only=True):
    """A recovery code given where a TOTP code is asked (docs/rules.md, "Recovery codes"):
    its keyed digest, deleted by the transaction that relies on it (REPLAYED when another use
    deleted it first), and the notice to the user, whose ``left`` that transaction fills in."""

    digest: bytes
    mail: MailItem

    def __repr__(self) -> str:
        return f"RecoveryUse(user_id={self.mail.user_id})"


class Outcome(enum.Enum):
    """How a write that re-checks its preconditions in its own transaction ended."""

    DONE = "done"
    INVALID = "invalid"  # the code is no longer pending (another call won), or expired
    LOCKED = "locked"  # the user was locked meanwhile
    STALE = "stale"  # the password changed since the check that led here
    REPLAYED = "replayed"  # the TOTP time step was accepted for this user already
    THROTTLED = "throttled"  # the caller's address is at its limit


class DeviceSeen(msgspec.Struct, frozen=True, kw_only=True):
    """Where a login comes from (docs/protocol.md, "Sessions and devices"), written with its
    session: ``name`` (the client's User-Agent) and ``address`` describe the session; with
    ``hash_code`` (a password login) the user's device is recorded or its last use moved on,
    and ``notice`` is queued only when the device is new to a user who had others before."""

    name: str
    address: str
    hash_code: int | None = None
    notice: MailItem | None = None


class SessionOpening(msgspec.Struct, frozen=True, kw_only=True):
    """A login's session, opened in one transaction with what it settles (``Store.open_session``,
    the rules in docs/rules.md): created only for ``password_version``, the version the check
    read, and only while the user is not locked.

    ``totp_step``: the time step just accepted (REPLAYED when not newer than the last);
    ``pending``: the second step it ends (STALE when another attempt ended it first);
    ``api_key``: (key, the nonce's digest), the nonce recorded for the key (REPLAYED when it
    was already, or the key is gone); ``clear``: counters
    (kind, key) emptied; ``release``: slots given back whatever the outcome; ``audit``: written
    on DONE; ``rehash``: an imported hash replaced by Argon2id."""

    digest: bytes  # the SHA-256 digest of the session's token
    user_id: int
    now: float
    password_version: int
    totp_step: int | None = None
    pending: bytes | None = None
    api_key: tuple[str, bytes] | None = None
    recovery: RecoveryUse | None = None  # instead of totp_step
    clear: Sequence[tuple[str, str]] = ()
    release: Sequence[Slot] = ()
    audit: Sequence[AuditEntry] = ()
    seen: DeviceSeen | None = None
    # (the hash just verified, its Argon2id replacement): written only while the stored hash
    # is still the verified one (docs/import.md, "At the next login")
    rehash: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"SessionOpening(user_id={self.user_id})"


class PendingStep(NamedTuple):
    """A second login step still open: whose, and for which password version."""

    user_id: int
    password_version: int


class Revocation(msgspec.Struct, frozen=True):
    """Sessions ended on some node: one session (``session_digest``) or all of a user's.
    ``reason`` is the LogoutEvent's Reason (docs/protocol.md, "Events")."""

    user_id: int
    reason: str
    session_digest: bytes | None = None


class ResetCode(msgspec.Struct, frozen=True):
    user_id: int
    created_at: float
    expires_at: float
    state: CodeState  # its moves: .codes.TRANSITIONS


class CodeIssue(msgspec.Struct, frozen=True, kw_only=True):
    """A new reset code for ``user_id`` (``Store.issue_code``): every pending code of the user
    is superseded, the code's mail queued and ``audit`` written with it. With ``limit``, nothing
    is issued when its counter is used up (the issue is counted under it otherwise); with
    ``authority``, CallerGone when it no longer holds."""

    user_id: int
    digest: bytes  # the SHA-256 digest of the code
    now: float
    expires_at: float
    mail: MailItem
    audit: Sequence[AuditEntry] = ()
    limit: Claim | None = None
    authority: Authority | None = None

    def __repr__(self) -> str:
        return f"CodeIssue(user_id={self.user_id})"


class PasswordReset(msgspec.Struct, frozen=True, kw_only=True):
    """A reset completed (``Store.complete_reset``): the code ``digest`` redeemed and the
    password set, in one transaction that also voids the user's other codes, ends every session
    and second step (and with ``revoke_api_keys`` the API keys), clears the reset failures and
    unlocks. INVALID when the code is no longer pending (another reset won), LOCKED when the user
    was locked meanwhile, REPLAYED when ``totp_step`` is not newer than the last accepted."""

    user_id: int
    digest: bytes
    password_hash: str
    now: float
    mail: MailItem
    audit: Sequence[AuditEntry] = ()
    totp_step: int | None = None
    revoke_api_keys: bool = False
    # The second factors the reset's checks read: put back if they changed meanwhile.
    checked: Factors | None = None
    recovery: RecoveryUse | None = None  # instead of totp_step

    def __repr__(self) -> str:
        return f"PasswordReset(user_id={self.user_id})"


class MailState(enum.StrEnum):
    """Where a message of the outbox stands: the ``state`` column's values."""

    QUEUED = "queued"  # waiting, or claimed by a sender (``claimed``) until its lease ends
    SENT = "sent"  # delivered; its sealed part erased
    FAILED = "failed"  # given up after its attempts; its sealed part erased


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
    key_id: str | None = None  # the key that chained it (None: before key ids)
