"""A reset code's life (oms_auth.store.codes), alone: the table is what docs/rules.md
("The code and the link") says."""

from __future__ import annotations

import re

import pytest

from oms_auth.store import codes, postgres_schema, sqlite_schema
from oms_auth.store.codes import CodeEvent, CodeState, Move, next_state

PENDING, USED, VOID = CodeState.PENDING, CodeState.USED, CodeState.VOID


def test_a_code_is_issued_pending_and_the_column_default_agrees() -> None:
    assert codes.ISSUED is PENDING
    # The schemas' first migration (never edited) spells the same default.
    for schema in (sqlite_schema, postgres_schema):
        default = re.search(
            r"CREATE TABLE reset_codes \(.*?state TEXT NOT NULL DEFAULT '(\w+)'",
            schema.MIGRATIONS[0],
            re.DOTALL,
        )
        assert default is not None and default[1] == codes.ISSUED.value


def test_the_table_is_the_spec() -> None:
    # Redeemed once by ResetPassword2; voided by a newer code or a password change.
    assert dict(codes.TRANSITIONS[PENDING]) == {
        CodeEvent.REDEEMED: USED,
        CodeEvent.SUPERSEDED: VOID,
        CodeEvent.PASSWORD_CHANGED: VOID,
    }
    assert set(codes.TRANSITIONS) == set(CodeState)


@pytest.mark.parametrize("state", [USED, VOID])
@pytest.mark.parametrize("event", list(CodeEvent))
def test_a_used_or_void_code_stays_so_whatever_happens(state: CodeState, event: CodeEvent) -> None:
    assert next_state(state, event) is None


def test_nothing_leads_back_to_pending() -> None:
    reached = {to for events in codes.TRANSITIONS.values() for to in events.values()}
    assert PENDING not in reached
    # Whatever sequence of events, a code that left pending never returns to it.
    for first in CodeEvent:
        state = next_state(PENDING, first)
        assert state is not None
        for later in CodeEvent:
            assert next_state(state, later) is None


def test_each_event_is_one_update_from_one_state() -> None:
    assert codes.REDEEM == Move(PENDING, USED)
    assert codes.SUPERSEDE == Move(PENDING, VOID)
    assert codes.PASSWORD_CHANGE == Move(PENDING, VOID)
    for event in CodeEvent:
        source, target = codes.move(event)
        assert next_state(source, event) is target


def test_expiry_is_derived_not_a_state() -> None:
    assert codes.redeemable(PENDING, expires_at=100.0, now=99.9)
    assert not codes.redeemable(PENDING, expires_at=100.0, now=100.0)
    assert not codes.redeemable(USED, expires_at=100.0, now=0.0)
    assert not codes.redeemable(VOID, expires_at=100.0, now=0.0)


def test_the_table_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        codes.TRANSITIONS[USED][CodeEvent.REDEEMED] = PENDING  # type: ignore[index]
