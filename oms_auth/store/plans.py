"""What each rule-bearing transaction decides, written once for both stores.

A store's transaction reads the state it needs (locking it as its concurrency requires: the
single writer on SQLite, row and advisory locks on PostgreSQL), hands it here as a named record,
and runs the :class:`Plan` it gets back: the statements to run, in order, and the outcome to
answer. A :class:`Step` with ``unless`` is a compare-and-set: when its statement changes no
row, the transaction answers that outcome at once (what ran before it stays). What each store
adds beside a plan is its own: its locks, the audit chain (its tail lock), and on PostgreSQL
the notice other nodes hear. The rules themselves are in docs/rules.md.

Pure: no I/O, no driver import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from . import codes
from . import recovery as rc
from . import sql as q
from .device_sql import seen_steps
from .records import (
    RESET_FAILURE,
    AccountChange,
    Admission,
    AuditEntry,
    Claim,
    CodeIssue,
    Outcome,
    PasswordReset,
    RecoveryUse,
    ResetCode,
    Room,
    SessionOpening,
)
from .sql import Statements

__all__ = [
    "Step",
    "Plan",
    "LoginState",
    "ResetState",
    "AccountState",
    "CodeCheck",
    "session_plan",
    "reset_plan",
    "issue_plan",
    "account_plan",
    "code_check",
    "throttled",
    "lock_due",
    "room_left",
    "admission",
]


class Step(NamedTuple):
    """One statement of a plan; with ``unless``, it must change exactly one row, or the
    transaction answers ``unless`` there."""

    sql: str
    args: tuple[object, ...]
    unless: Outcome | None = None


class Plan(NamedTuple):
    """The statements a transaction runs, what it answers when every step held, and audit
    rows of its own beside the caller's."""

    steps: list[Step]
    outcome: Outcome
    audit: Sequence[AuditEntry] = ()

    @classmethod
    def refused(cls, outcome: Outcome) -> Plan:
        """Nothing to write: the transaction answers ``outcome``."""
        return cls([], outcome)


class LoginState(NamedTuple):
    """The user's row as a login reads it (``Statements.login_state``)."""

    password_version: int
    totp_last_step: int | None
    locked_until: float | None
    recovery_left: int = 0  # the user's unused recovery codes


class ResetState(NamedTuple):
    """The user's row as a reset reads it (``Statements.reset_state``)."""

    locked_until: float | None
    totp_last_step: int | None
    totp_sealed: bytes | None
    recovery_left: int = 0  # the user's unused recovery codes


class AccountState(NamedTuple):
    """The user's row as an account change reads it (``Statements.account_state``)."""

    password_version: int
    totp_last_step: int | None
    has_totp: bool


class CodeCheck(NamedTuple):
    """What ``check_code`` found: the counters' events within their windows, and the code
    when it is still live (pending, unexpired, the user's when one was named)."""

    invalid_count: int
    code: ResetCode | None
    attempt_count: int


def _locked(locked_until: float | None, now: float) -> bool:
    return locked_until is not None and locked_until > now


def _replayed(step: int | None, last_step: int | None) -> bool:
    """A TOTP time step not newer than the last one accepted for the user."""
    return step is not None and last_step is not None and last_step >= step


def session_plan(s: Statements, o: SessionOpening, state: LoginState | None) -> Plan:
    """``open_session``: REPLAYED leaves the pending second step for another code; the second
    step is ended before STALE or LOCKED is answered (it was for that password)."""
    if state is not None and _replayed(o.totp_step, state.totp_last_step):
        return Plan.refused(Outcome.REPLAYED)
    steps: list[Step] = []
    if o.pending is not None:  # another attempt may have used this second step already
        steps.append(Step(s.delete_pending_login, (o.pending,), Outcome.STALE))
    if state is None or state.password_version != o.password_version:
        return Plan(steps, Outcome.STALE)
    if _locked(state.locked_until, o.now):
        return Plan(steps, Outcome.LOCKED)
    held_key: str | None = None
    if o.api_key is not None:  # the key gone, or its nonce used already
        held_key, nonce = o.api_key
        steps.append(Step(s.hold_api_key, (held_key, o.user_id), Outcome.REPLAYED))
        steps.append(Step(s.record_nonce, (held_key, nonce), Outcome.REPLAYED))
    if o.totp_step is not None:
        steps.append(Step(s.set_totp_step, (o.totp_step, o.user_id)))
    if o.recovery is not None:
        steps += _recovery_used(s, o.user_id, o.recovery, state.recovery_left - 1, o.now)
    steps.append(Step(s.insert_session, (o.digest, o.user_id, o.now, o.now, held_key)))
    steps.append(Step(s.set_last_login, (o.now, o.user_id)))
    if o.rehash is not None:  # no row changed: another login replaced it first, or a reset
        verified, replacement = o.rehash
        steps.append(Step(s.rehash_password, (replacement, o.user_id, verified)))
    steps.extend(Step(s.clear_events, (kind, s.event_key(key))) for kind, key in o.clear)
    if o.seen is not None:  # last: its notice's insert may answer DONE early
        steps.extend(Step(*t) for t in seen_steps(s, o.seen, o.user_id, o.digest, o.now))
    return Plan(steps, Outcome.DONE)


def reset_plan(
    s: Statements,
    r: PasswordReset,
    state: ResetState | None,
    questions: Sequence[tuple[str, str]] = (),
) -> Plan:
    """``complete_reset``: the code's redemption decides a race (a loser, once the winner
    commits, finds no pending code: INVALID). ``questions``: the user's as they are now, so
    second factors an old-password session changed since the reset's checks are put back."""
    if state is None:
        return Plan.refused(Outcome.INVALID)
    if _locked(state.locked_until, r.now):
        return Plan.refused(Outcome.LOCKED)
    if _replayed(r.totp_step, state.totp_last_step):
        return Plan.refused(Outcome.REPLAYED)
    uid = r.user_id
    # A recovery code lost to another use leaves the reset code for another try, as a TOTP
    # step taken meanwhile does.
    steps = (
        []
        if r.recovery is None
        else _recovery_used(s, uid, r.recovery, state.recovery_left - 1, r.now)
    )
    steps += [
        Step(s.redeem_code, q.redeem_args(r.digest, uid, r.now), Outcome.INVALID),
        Step(s.set_password, (r.password_hash, r.totp_step, uid)),
        Step(s.move_user_codes, q.move_codes_args(codes.PASSWORD_CHANGE, uid)),
        Step(s.delete_user_sessions, (uid,)),
    ]
    if r.revoke_api_keys:
        steps.append(Step(s.delete_user_api_keys, (uid,)))
    steps += [
        Step(s.delete_user_pending_logins, (uid,)),
        Step(s.clear_events, (RESET_FAILURE, s.event_key(str(uid)))),
        Step(s.insert_mail, q.mail_args(r.mail, r.now)),
    ]
    restore = _factors_put_back(s, r, state, tuple(questions))
    return Plan(steps + restore, Outcome.DONE, _restored(r) if restore else ())


def _factors_put_back(
    s: Statements, r: PasswordReset, state: ResetState, questions: tuple[tuple[str, str], ...]
) -> list[Step]:
    """The steps that put the second factors back as the reset's checks read them (a TOTP
    enrolment or new questions that landed between those checks and this transaction)."""
    checked, uid = r.checked, r.user_id
    if checked is None:
        return []
    steps: list[Step] = []
    sealed = None if state.totp_sealed is None else bytes(state.totp_sealed)
    if sealed != checked.totp_sealed:
        steps.append(Step(s.set_totp, (checked.totp_sealed, uid)))
    if questions != checked.questions:
        steps.append(Step(s.delete_questions, (uid,)))
        steps.extend(Step(s.insert_question, (uid, qn, a)) for qn, a in checked.questions)
    return steps


def _restored(r: PasswordReset) -> list[AuditEntry]:
    """The audit row of second factors a reset put back, beside the reset's own."""
    base = r.audit[0] if r.audit else AuditEntry(action="password-set", target_id=r.user_id)
    detail = "two-factor or security questions changed during the reset were put back"
    return [msgspec.structs.replace(base, action="factors-restored", detail=detail)]


def issue_plan(s: Statements, i: CodeIssue) -> Plan:
    """``issue_code``: THROTTLED when its limit's counter is used up (the first step takes the
    slot only while one is left: ``insert_event_in_room``); else the issue counted, the user's
    pending codes superseded (the newest code wins) and the code and its mail written."""
    steps: list[Step] = []
    if i.limit is not None:
        c = i.limit
        slot = (c.kind, s.event_key(c.key), i.now, i.now - c.window, c.limit)
        steps.append(Step(s.insert_event_in_room, slot, unless=Outcome.THROTTLED))
    steps += [
        Step(s.move_user_codes, q.move_codes_args(codes.SUPERSEDE, i.user_id)),
        Step(s.insert_code, q.code_args(i.digest, i.user_id, i.now, i.expires_at)),
        Step(s.insert_mail, q.mail_args(i.mail, i.now)),
    ]
    return Plan(steps, Outcome.DONE)


def account_plan(
    s: Statements, change: AccountChange, state: AccountState | None, now: float
) -> Plan:
    """``change_account`` (see ``Store.change_account``); the mail is a step, the audit row
    the store's to add."""
    version = change.password_version
    if state is None or (version is not None and state.password_version != version):
        return Plan.refused(Outcome.STALE)
    if _replayed(change.totp_step, state.totp_last_step):
        return Plan.refused(Outcome.REPLAYED)
    if change.set_totp and state.has_totp == (change.totp_sealed is not None):
        return Plan.refused(Outcome.INVALID)
    if change.recovery_codes and not state.has_totp:  # () voids the set whatever TOTP is
        return Plan.refused(Outcome.INVALID)
    uid = change.user_id
    # A code proves only a change that turns TOTP off, which voids the rest: none left.
    steps = [] if change.recovery is None else _recovery_used(s, uid, change.recovery, 0, now)
    if change.set_totp:
        steps.append(Step(s.set_totp, (change.totp_sealed, uid)))
    if change.recovery_codes is not None or (change.set_totp and change.totp_sealed is None):
        steps.append(Step(s.placeholders(rc.DELETE_ALL), (uid,)))
    insert = s.placeholders(rc.INSERT)
    steps.extend(Step(insert, (uid, code)) for code in change.recovery_codes or ())
    if change.totp_step is not None:
        steps.append(Step(s.set_totp_step, (change.totp_step, uid)))
    if change.questions is not None:
        steps.append(Step(s.delete_questions, (uid,)))
        steps.extend(Step(s.insert_question, (uid, qn, a)) for qn, a in change.questions)
    if change.end_sessions is not None:
        steps.append(Step(s.delete_user_sessions, (uid,)))
        steps.append(Step(s.delete_user_pending_logins, (uid,)))
    if change.mail is not None:
        steps.append(Step(s.insert_mail, q.mail_args(change.mail, now)))
    return Plan(steps, Outcome.DONE)


def _recovery_used(
    s: Statements, user_id: int, use: RecoveryUse, left: int, now: float
) -> list[Step]:
    """A recovery code used (REPLAYED when another use took it first), and the user's notice
    saying how many are left."""
    mail = msgspec.structs.replace(use.mail, public={**use.mail.public, "left": max(left, 0)})
    return [
        Step(s.placeholders(rc.USE), (user_id, use.digest), Outcome.REPLAYED),
        Step(s.insert_mail, q.mail_args(mail, now)),
    ]


def throttled(invalid_count: int, invalid: Claim) -> bool:
    """``check_code``: the address is at its invalid-code limit (no code is looked up then)."""
    return invalid_count >= invalid.limit


def code_check(
    found: CodeCheck, invalid: Claim, attempt: Claim | None
) -> tuple[Outcome, Sequence[Claim]]:
    """``check_code``: the outcome, and the counters to record an event under. THROTTLED
    when the address's invalid-code counter is used up; INVALID (counted) when no live code
    matches; LOCKED when the code's attempts are used up; else DONE, the attempt counted."""
    if throttled(found.invalid_count, invalid):
        return Outcome.THROTTLED, ()
    if found.code is None:
        return Outcome.INVALID, (invalid,)
    if attempt is None:
        return Outcome.DONE, ()
    if found.attempt_count >= attempt.limit:
        return Outcome.LOCKED, ()
    return Outcome.DONE, (attempt,)


def room_left(claims: Sequence[Claim], counts: Sequence[int]) -> bool:
    """``reserve``: every claim's counter (``counts``, events within its window) has a slot
    left; else none is taken (all or none)."""
    return all(n < c.limit for c, n in zip(claims, counts, strict=True))


def admission(claims: Sequence[Claim], found: Sequence[tuple[int, int]]) -> Admission:
    """``admit``: ``found`` is each counter's events within its window and how many of them
    are attempts still in flight. FAILURES when a counter's failures reached its limit (the
    attempt is refused); else IN_FLIGHT when failures and attempts in flight fill one (the
    attempt waits for one to end, docs/rules.md, "Fair limits"); else FREE (a slot is taken
    under every counter)."""
    failures = tuple(total - flying for total, flying in found)
    pairs = list(zip(claims, found, strict=True))
    for claim, (total, flying) in pairs:
        if total - flying >= claim.limit:
            return Admission(Room.FAILURES, failures, claim)
    for claim, (total, _) in pairs:
        if total >= claim.limit:
            return Admission(Room.IN_FLIGHT, failures, claim)
    return Admission(Room.FREE, failures)


def lock_due(locked_until: float | None, found: bool, count: int, claim: Claim, now: float) -> bool:
    """``lock_when_spent``: lock the user when it exists, is not locked already, and
    ``claim``'s counter (``count`` events within its window) is used up."""
    return found and not _locked(locked_until, now) and count >= claim.limit
