"""What every part of the engine is given: the store, the hasher, the sealer, settings, a clock.

The clock is a seam (as in Django's token generator): tests pass a function they can move
forward, so expiry and lockout are tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Settings
from ..crypto import Hasher, Sealer
from ..store import Store

__all__ = ["Deps", "Clock"]

Clock = Callable[[], float]


@dataclass
class Deps:
    store: Store
    hasher: Hasher
    sealer: Sealer
    settings: Settings
    clock: Clock = time.time
    # Called with a user id after that user's password changed, to log its connections off.
    on_password_changed: list[Callable[[int], None]] = field(default_factory=list)
    # Called with a session's token digest and the LogoutEvent reason when this node ended it
    # (LogOut, expiry), so every connection holding it is logged off at once.
    on_session_revoked: list[Callable[[bytes, str], None]] = field(default_factory=list)
    # Called when mail was queued, to wake the delivery worker.
    on_mail_queued: list[Callable[[], None]] = field(default_factory=list)

    # Called with a counter name (resets_requested, mail_sent, ...) for the metrics.
    on_event: list[Callable[[str], None]] = field(default_factory=list)

    def event(self, name: str) -> None:
        for callback in self.on_event:
            callback(name)

    def password_changed(self, user_id: int) -> None:
        for callback in self.on_password_changed:
            callback(user_id)

    def session_revoked(self, token_digest: bytes, reason: str) -> None:
        for callback in self.on_session_revoked:
            callback(token_digest, reason)

    def mail_queued(self) -> None:
        for callback in self.on_mail_queued:
            callback()
