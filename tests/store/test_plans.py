"""The decisions both stores run (oms_auth/store/plans.py), on their own: no database."""

from __future__ import annotations

import msgspec

from oms_auth.store import (
    AccountChange,
    AuditEntry,
    Claim,
    CodeIssue,
    CodeState,
    Factors,
    MailItem,
    Outcome,
    PasswordReset,
    RecoveryUse,
    Reservation,
    ResetCode,
    Room,
    SessionOpening,
    Slot,
    plans,
)
from oms_auth.store.sql import POSTGRES, SQLITE

MAIL = MailItem(kind="reset", recipient="a@x.test", user_id=7, public={})
S = SQLITE


def opening(**fields: object) -> SessionOpening:
    base: dict[str, object] = {"digest": b"d" * 32, "user_id": 7, "now": 100.0}
    return SessionOpening(**{"password_version": 2, **base, **fields})  # type: ignore[arg-type]


def test_a_replayed_totp_step_opens_nothing_and_keeps_the_pending_step() -> None:
    state = plans.LoginState(password_version=2, totp_last_step=50, locked_until=None)
    plan = plans.session_plan(S, opening(totp_step=50, pending=b"p" * 32), state)
    assert plan == plans.Plan([], Outcome.REPLAYED)


def test_a_stale_or_locked_login_still_ends_its_second_step() -> None:
    stale = plans.LoginState(password_version=3, totp_last_step=None, locked_until=None)
    locked = plans.LoginState(password_version=2, totp_last_step=None, locked_until=200.0)
    for state, outcome in ((stale, Outcome.STALE), (locked, Outcome.LOCKED), (None, Outcome.STALE)):
        plan = plans.session_plan(S, opening(pending=b"p" * 32), state)
        assert plan.outcome is outcome
        assert [s.sql for s in plan.steps] == [S.delete_pending_login]


def test_an_api_key_login_is_replayed_unless_its_key_holds_and_its_nonce_is_new() -> None:
    state = plans.LoginState(password_version=2, totp_last_step=None, locked_until=None)
    plan = plans.session_plan(S, opening(api_key=("key", b"n" * 32)), state)
    assert plan.outcome is Outcome.DONE
    assert plan.steps[:2] == [
        plans.Step(S.hold_api_key, ("key", 7), Outcome.REPLAYED),
        plans.Step(S.record_nonce, ("key", b"n" * 32), Outcome.REPLAYED),
    ]


def test_a_reset_is_refused_before_the_code_is_touched_when_locked_or_replayed() -> None:
    reset = PasswordReset(
        user_id=7, digest=b"c" * 32, password_hash="h", now=100.0, mail=MAIL, totp_step=5
    )
    assert plans.reset_plan(S, reset, None).outcome is Outcome.INVALID
    locked = plans.ResetState(locked_until=101.0, totp_last_step=None, totp_sealed=None)
    assert plans.reset_plan(S, reset, locked) == plans.Plan([], Outcome.LOCKED)
    replayed = plans.ResetState(locked_until=None, totp_last_step=5, totp_sealed=None)
    assert plans.reset_plan(S, reset, replayed) == plans.Plan([], Outcome.REPLAYED)
    done = plans.reset_plan(S, reset, plans.ResetState(99.0, 4, None))
    assert done.steps[0].sql == S.redeem_code and done.steps[0].unless is Outcome.INVALID


def test_a_reset_puts_back_second_factors_changed_since_its_checks_and_audits_it() -> None:
    checked = Factors(totp_sealed=None, questions=(("Pet?", "$argon2id$a"),))
    reset = PasswordReset(
        user_id=7,
        digest=b"c" * 32,
        password_hash="h",
        now=100.0,
        mail=MAIL,
        audit=[AuditEntry(action="password-set", target_id=7)],
        checked=checked,
    )
    same = plans.reset_plan(S, reset, plans.ResetState(None, None, None), [("Pet?", "$argon2id$a")])
    assert not same.audit and S.set_totp not in [s.sql for s in same.steps]
    # An authenticator enrolled and the questions replaced meanwhile: both put back.
    changed = plans.reset_plan(
        S, reset, plans.ResetState(None, None, b"sealed"), [("Thief?", "$argon2id$t")]
    )
    assert changed.steps[-3:] == [
        plans.Step(S.set_totp, (None, 7)),
        plans.Step(S.delete_questions, (7,)),
        plans.Step(S.insert_question, (7, "Pet?", "$argon2id$a")),
    ]
    assert [a.action for a in changed.audit] == ["factors-restored"]


def test_an_issue_takes_its_limits_slot_first_as_a_compare_and_set_refused_as_throttled() -> None:
    limit = Claim("reset-requests", "k\x00ey", 3600, 3)
    issue = CodeIssue(user_id=7, digest=b"c" * 32, now=1.0, expires_at=60.0, mail=MAIL, limit=limit)
    slot = plans.issue_plan(POSTGRES, issue).steps[0]
    assert slot.sql == POSTGRES.insert_event_in_room
    assert slot.args == ("reset-requests", "k\\0ey", 1.0, 1.0 - 3600, 3)  # no NUL in PG text
    assert slot.unless is Outcome.THROTTLED
    unlimited = msgspec.structs.replace(issue, limit=None)
    assert [s.unless for s in plans.issue_plan(S, unlimited).steps] == [None, None, None]


def test_a_code_check_throttles_then_counts_invalid_then_locks() -> None:
    invalid, attempt = Claim("invalid", "a", 60, 3), Claim("attempt", "c", 60, 2)
    code = ResetCode(7, 1.0, 60.0, CodeState.PENDING)
    assert plans.code_check(plans.CodeCheck(3, code, 0), invalid, attempt) == (
        Outcome.THROTTLED,
        (),
    )
    assert plans.code_check(plans.CodeCheck(2, None, 0), invalid, attempt) == (
        Outcome.INVALID,
        (invalid,),
    )
    assert plans.code_check(plans.CodeCheck(0, code, 2), invalid, attempt)[0] is Outcome.LOCKED
    assert plans.code_check(plans.CodeCheck(0, code, 1), invalid, attempt) == (
        Outcome.DONE,
        (attempt,),
    )


def test_a_reservation_names_which_slots_go_back() -> None:
    user, source = Slot("login-user", "alice", 1.0), Slot("login-source", "10.0.0.1", 1.0)
    reserved = Reservation(user, source)
    assert reserved.release_all() == (user, source)
    assert reserved.keep_user_slot() == (source,)


def test_a_reservation_is_all_or_none() -> None:
    claims = [Claim("a", "x", 60, 2), Claim("b", "y", 60, 5)]
    assert plans.room_left(claims, [1, 4])
    assert not plans.room_left(claims, [2, 0])


NOTICE = MailItem(kind="recovery-code-used", recipient="a@x.test", user_id=7, public={"at": 1})


def test_a_recovery_code_is_used_by_a_compare_and_set_with_the_count_left_in_its_notice() -> None:
    use = RecoveryUse(digest=b"r" * 32, mail=NOTICE)
    state = plans.LoginState(password_version=2, totp_last_step=None, locked_until=None)
    plan = plans.session_plan(S, opening(recovery=use), state._replace(recovery_left=4))
    assert plan.outcome is Outcome.DONE
    (used,) = [s for s in plan.steps if s.unless is Outcome.REPLAYED]
    assert used.args == (7, b"r" * 32) and used.sql.startswith("DELETE FROM recovery_codes")
    (mail,) = [s for s in plan.steps if s.sql == S.insert_mail]
    assert '"left":3' in str(mail.args[3])
    # On PostgreSQL the same statement in its placeholders.
    pg = plans.session_plan(POSTGRES, opening(recovery=use), state._replace(recovery_left=4))
    assert any("$2" in s.sql and s.unless is Outcome.REPLAYED for s in pg.steps)


def test_a_reset_uses_its_recovery_code_before_it_redeems_the_link() -> None:
    use = RecoveryUse(digest=b"r" * 32, mail=NOTICE)
    reset = PasswordReset(
        user_id=7, digest=b"c" * 32, password_hash="h", now=100.0, mail=MAIL, recovery=use
    )
    state = plans.ResetState(locked_until=None, totp_last_step=None, totp_sealed=b"s")
    plan = plans.reset_plan(S, reset, state._replace(recovery_left=1))
    # A use lost to another leaves the link for another try: it is the first step.
    assert plan.steps[0].unless is Outcome.REPLAYED and plan.steps[0].args == (7, b"r" * 32)
    assert plan.steps[2].sql == S.redeem_code


def test_recovery_codes_need_totp_and_turning_totp_off_removes_them() -> None:
    on = plans.AccountState(password_version=2, totp_last_step=None, has_totp=True)
    off = on._replace(has_totp=False)
    entry = AuditEntry(action="recovery-codes-created")
    made = AccountChange(user_id=7, password_version=2, audit=entry, recovery_codes=(b"a", b"b"))
    assert plans.account_plan(S, made, off, 1.0) == plans.Plan([], Outcome.INVALID)
    steps = plans.account_plan(S, made, on, 1.0).steps
    assert [s.args for s in steps] == [(7,), (7, b"a"), (7, b"b")]
    voided = AccountChange(user_id=7, password_version=None, audit=entry, recovery_codes=())
    assert [s.args for s in plans.account_plan(S, voided, off, 1.0).steps] == [(7,)]
    disabled = AccountChange(user_id=7, password_version=2, audit=entry, set_totp=True)
    steps = plans.account_plan(S, disabled, on, 1.0).steps
    assert [s.sql for s in steps][1].startswith("DELETE FROM recovery_codes WHERE user_id")


def test_a_limit_full_of_failures_refuses_and_one_full_of_attempts_in_flight_waits() -> None:
    user, source = Claim("u", "alice", 60, 3), Claim("s", "10.0.0.1", 60, 5)
    # (events within the window, of them still in flight) per counter
    assert plans.admission([user, source], [(2, 2), (4, 0)]).room is Room.FREE
    waits = plans.admission([user, source], [(3, 1), (4, 0)])
    assert (waits.room, waits.full, waits.failures) == (Room.IN_FLIGHT, user, (2, 4))
    assert plans.admission([user, source], [(3, 1), (5, 0)]).full == source  # failures first
    refused = plans.admission([user, source], [(5, 2), (1, 1)])
    assert (refused.room, refused.full) == (Room.FAILURES, user)
