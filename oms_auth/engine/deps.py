"""What every part of the engine is given: the store, the hasher, the sealer, settings, a clock,
and where to tell what happened.

The clock is a seam (as in Django's token generator): tests pass a function they can move
forward, so expiry and lockout are tested without sleeping. ``events`` is the one way the engine
reaches up: it says what happened (a counter, a user's sessions ended, a session revoked,
mail queued) to whoever wired it, without knowing who listens.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..config import Settings
from ..crypto import Hasher, Sealer
from ..store import Store

__all__ = ["Deps", "Clock", "Events", "Quiet"]

Clock = Callable[[], float]


class Events(Protocol):
    """What the engine tells the layers above it (the app wires metrics, connections, mail)."""

    def count(self, name: str) -> None:
        """A counter for /metrics, e.g. ``resets_requested``; ``login:failed`` is an outcome."""

    def sessions_ended(self, user_id: int, reason: str) -> None:
        """Every session of the user ended here (a reset, a forced logoff): the user's
        connections on this node are logged off with ``reason``."""

    def session_revoked(self, token_digest: bytes, reason: str) -> None:
        """A session ended here (LogOut, expiry): every connection holding it is logged off."""

    def mail_queued(self) -> None:
        """A committed transaction queued mail: the delivery worker should look."""


class Quiet:
    """Events nobody listens to: the CLI's offline commands, engine tests."""

    def count(self, name: str) -> None:
        pass

    def sessions_ended(self, user_id: int, reason: str) -> None:
        pass

    def session_revoked(self, token_digest: bytes, reason: str) -> None:
        pass

    def mail_queued(self) -> None:
        pass


@dataclass
class Deps:
    store: Store
    hasher: Hasher
    sealer: Sealer
    settings: Settings
    clock: Clock = time.time
    events: Events = field(default_factory=Quiet)
    # Keys the digests that stand for unknown usernames (crypto.names_key of the service key;
    # build_deps sets it). The default, a random key, keeps them unguessable where none is
    # given, at the cost of grouping only within the process.
    names_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    # Keys device HashCodes and opaque SessionIds (crypto.devices_key; build_deps sets it).
    devices_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
