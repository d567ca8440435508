"""The login limits' slots (docs/rules.md, "Fair limits"): an attempt takes one slot of the
per-username and one of the per-address limit before its secret is checked, waiting its turn
while the limits are full of attempts in flight (:mod:`.turns`); a success gives its slots
back, a failure keeps them (settled as failures).

The rule this module holds: every slot taken is either given back or settled, and either wakes
the next waiter of its line, so a waiting attempt never waits for a slot already free on this
node (other nodes' slots are seen by :func:`.turns.admit`'s poll).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..store import Claim, Reservation, Room, Slot
from . import turns
from .deps import Deps
from .texts import LOGINS_IN_PROGRESS, TOO_MANY_LOGINS

__all__ = ["LOGIN_FAILURE_USER", "LOGIN_FAILURE_SOURCE", "LoginSlots"]

LOGIN_FAILURE_USER = "login-failure-user"
LOGIN_FAILURE_SOURCE = "login-failure-source"


class LoginSlots:
    """Takes, gives back and settles login slots, and slows down once failures pile up."""

    def __init__(self, deps: Deps, *, delay_unit: float = 0.25) -> None:
        self.deps = deps
        # Seconds of delay per doubling once failures pile up; tests set 0.
        self.delay_unit = delay_unit
        self.turns = turns.Turns()

    async def attempt(self, name_key: str, source: str) -> Reservation | str:
        """A login attempt's slots (per username and per address), taken before its secret is
        checked, and the growing delay once failures pile up; the refusal's text when a limit
        is used up. The slots, to give back (:meth:`give_back`) if the attempt turns out not
        to count, or to keep (:meth:`settle`) when it failed."""
        reserved = await self.reserve(name_key, source)
        if isinstance(reserved, str):
            return reserved
        await self._slow_down(reserved[1])
        return reserved[0]

    async def reserve(self, name_key: str, source: str) -> tuple[Reservation, int] | str:
        """One slot of each limit, waiting its turn while they are full of attempts in
        flight: the slots and the username's failures so far, or the refusal's text (counted
        as throttled)."""
        d, s = self.deps, self.deps.settings
        window = s.login_window_seconds
        claims = [
            Claim(LOGIN_FAILURE_USER, name_key, window, s.login_failures_per_user),
            Claim(LOGIN_FAILURE_SOURCE, source, window, s.login_failures_per_source),
        ]
        found, at = await turns.admit(d.store, self.turns, claims, d.clock, s.login_wait_seconds)
        if found.room is not Room.FREE:
            d.events.count("login:throttled")
            return TOO_MANY_LOGINS if found.room is Room.FAILURES else LOGINS_IN_PROGRESS
        user, address = (
            Slot(LOGIN_FAILURE_USER, name_key, at),
            Slot(LOGIN_FAILURE_SOURCE, source, at),
        )
        return Reservation(user, address), found.failures[0]

    async def give_back(self, slots: Sequence[Slot]) -> None:
        """Slots of attempts that do not count: released, and a waiter for each woken."""
        for slot in slots:
            await self.deps.store.release(*slot)
            self.wake(slot)

    async def settle(self, slots: Sequence[Slot]) -> None:
        """Slots of failed attempts: kept, as failures (waiters told: the limit may be full of
        failures now)."""
        await self.deps.store.settle(slots)
        for slot in slots:
            self.wake(slot)

    async def after_opening(self, reserved: Reservation, opened: bool) -> None:
        """A session's transaction gave the address's slot back itself; the username's goes
        back on a success and stays on a failure (its count)."""
        self.wake(reserved.source)
        await (self.give_back if opened else self.settle)([reserved.user])

    def wake(self, slot: Slot) -> None:
        self.turns.wake(turns.line_key(slot.kind, slot.key))

    async def _slow_down(self, failures: int) -> None:
        # Three free tries, then 0.25 s, 0.5 s, 1 s ... capped at 4 s.
        if failures >= 3 and self.delay_unit > 0:
            await asyncio.sleep(min(self.delay_unit * 2 ** (failures - 3), 4.0))
