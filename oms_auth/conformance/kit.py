"""The kit's vocabulary: what a run is given, how a case ends, and what it leaves behind.

A case is an async function of (options, evidence). It ends in one of three ways::

    returns            -> pass
    raises Skip        -> skip   (it needs something the run was not given; the message says what)
    raises Failure     -> fail   (the server departed from the contract; the message says how)

This module imports nothing else of the kit: the registry, the probe, the cases, the runner and
the reports all stand on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Options", "Result", "Case", "CaseFunction", "Skip", "Failure", "expect"]


@dataclass
class Options:
    """What one run is given: the server, the users it may act as, and where its mail lands."""

    url: str
    operator: tuple[str, str] | None = None
    trader: tuple[str, str] | None = None
    target: str | None = None
    maildir: Path | None = None
    timeout: float = 10.0
    # Shared across the cases of one run: the target's latest mailed link. The server allows
    # few reset requests per user and hour, so cases reuse a link rather than ask again.
    latest_link: tuple[int, str, str] | None = None
    # Without ``target``, the reset cases' target is a user the run makes for itself (with
    # CreateUser), so runs repeat against one server without meeting its hourly request limit.
    own_target: str | None = None

    def secrets(self) -> tuple[str, ...]:
        """The passwords this run was given: the evidence never shows them."""
        return tuple(creds[1] for creds in (self.operator, self.trader) if creds is not None)


CaseFunction = Callable[[Options, list[str]], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    """One registered case: its name (for ``--case``), what it checks, and how."""

    name: str
    title: str
    run: CaseFunction


@dataclass
class Result:
    case: str
    title: str
    verdict: str  # pass | fail | skip
    reason: str = ""
    evidence: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Skip(Exception):
    """The case cannot run with what was given; the message says what it needs."""


class Failure(AssertionError):
    """The server departed from the contract; the message says how."""


def expect(condition: bool, message: str) -> None:
    """Fail the case with ``message`` unless ``condition`` holds."""
    if not condition:
        raise Failure(message)
