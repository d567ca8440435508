"""A reset code's life, as data: its states and the moves between them (docs/rules.md, "The
code and the link").

Everything that changes a code's state lives in :data:`TRANSITIONS`; the stores' SQL takes its
state values from here as bound parameters (:mod:`.sql`), so no state is spelled out in a
statement.

The rules the table holds:

- A code is born ``pending`` (``issue_code``).
- ``pending -> used`` when ResetPassword2 redeems it (``complete_reset``). The statement moves it
  only *from* ``pending``, so of any number of racing redemptions exactly one wins.
- ``pending -> void`` when a newer code is issued for the user (``issue_code``), or when the
  user's password changes (``complete_reset``, for every other code of that user).
- ``used`` and ``void`` are final: nothing moves a code out of them, so nothing makes a spent
  code ``pending`` again.
- Expiry is not a state: a ``pending`` code past its ``expires_at`` is dead, derived from the
  time it is looked at (:func:`redeemable`); pruning deletes it later.
- Looking a code up (opening the link, GetUserIdForPasswordSet) moves nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, NamedTuple

__all__ = [
    "CodeState",
    "CodeEvent",
    "Move",
    "ISSUED",
    "TRANSITIONS",
    "next_state",
    "move",
    "redeemable",
    "REDEEM",
    "SUPERSEDE",
    "PASSWORD_CHANGE",
]


class CodeState(enum.StrEnum):
    """What ``reset_codes.state`` holds (the column's text values)."""

    PENDING = "pending"
    USED = "used"
    VOID = "void"


class CodeEvent(enum.Enum):
    """What happens to a code."""

    REDEEMED = "redeemed"  # ResetPassword2 set the password with it
    SUPERSEDED = "superseded"  # a newer code was issued for the same user
    PASSWORD_CHANGED = "password-changed"  # the user's password changed (by another code)


# The state a new code starts in.
ISSUED: Final = CodeState.PENDING

# state -> event -> the state it leads to. An event missing for a state cannot happen in it.
TRANSITIONS: Final[Mapping[CodeState, Mapping[CodeEvent, CodeState]]] = MappingProxyType(
    {
        CodeState.PENDING: MappingProxyType(
            {
                CodeEvent.REDEEMED: CodeState.USED,
                CodeEvent.SUPERSEDED: CodeState.VOID,
                CodeEvent.PASSWORD_CHANGED: CodeState.VOID,
            }
        ),
        CodeState.USED: MappingProxyType({}),
        CodeState.VOID: MappingProxyType({}),
    }
)


def next_state(state: CodeState, event: CodeEvent) -> CodeState | None:
    """Where ``event`` takes a code in ``state``; None when it cannot happen there."""
    return TRANSITIONS[state].get(event)


class Move(NamedTuple):
    """One event as an UPDATE applies it: ``SET state = target WHERE state = source``."""

    source: CodeState
    target: CodeState


def move(event: CodeEvent) -> Move:
    """The one move ``event`` makes (each event applies to exactly one state)."""
    moves = [Move(s, t) for s, events in TRANSITIONS.items() if (t := events.get(event))]
    if len(moves) != 1:
        raise ValueError(f"{event} must apply to exactly one state, not {len(moves)}")
    return moves[0]


def redeemable(state: CodeState, expires_at: float, now: float) -> bool:
    """Whether a code can still be redeemed: in the state redemption moves from, unexpired."""
    return state is REDEEM.source and expires_at > now


# The moves the stores' statements make, derived from the table once.
REDEEM: Final = move(CodeEvent.REDEEMED)
SUPERSEDE: Final = move(CodeEvent.SUPERSEDED)
PASSWORD_CHANGE: Final = move(CodeEvent.PASSWORD_CHANGED)
