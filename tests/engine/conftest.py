"""The engine on its own: a real store (both kinds), real Argon2id at its lowest cost, an
injected clock and an Events recorder; no socket, no server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oms_auth.app import build_deps
from oms_auth.engine.deps import Deps

from ..helpers import Clock, settings_for


class Told:
    """Events as the engine tells them, kept in order (the engine's one way up)."""

    def __init__(self) -> None:
        self.counts: list[str] = []
        self.ended: list[tuple[int, str]] = []
        self.revoked: list[tuple[bytes, str]] = []
        self.mail = 0

    def count(self, name: str) -> None:
        self.counts.append(name)

    def sessions_ended(self, user_id: int, reason: str) -> None:
        self.ended.append((user_id, reason))

    def session_revoked(self, token_digest: bytes, reason: str) -> None:
        self.revoked.append((token_digest, reason))

    def mail_queued(self) -> None:
        self.mail += 1


@pytest.fixture
async def deps(tmp_path: Path, clock: Clock, db: str) -> AsyncIterator[Deps]:
    d = await build_deps(settings_for(tmp_path, db=db), clock)
    d.events = Told()
    try:
        yield d
    finally:
        await d.store.close()
        d.hasher.close()


@pytest.fixture
def told(deps: Deps) -> Told:
    assert isinstance(deps.events, Told)
    return deps.events
