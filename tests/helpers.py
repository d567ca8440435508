"""Shared test helpers: a movable clock, cheap-but-real settings, user creation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from oms_auth.cli import add_user
from oms_auth.config import Settings
from oms_auth.engine.deps import Deps


class Clock:
    """A clock tests move by hand: expiry and lockout without sleeping."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Real Argon2id at the lowest cost, a store and a Maildir in ``tmp_path``, port 0."""
    values: dict[str, Any] = dict(
        db=str(tmp_path / "oms-auth.sqlite3"),
        port=0,
        mail=f"maildir:{tmp_path / 'mail'}",
        argon2_time_cost=1,
        argon2_memory_kib=64,
        mail_retry_seconds=0.05,
    )
    values.update(overrides)
    return Settings(**values)


PASSWORD = "Correct-Horse9"


async def make_user(deps: Deps, username: str, **kwargs: Any) -> int:
    kwargs.setdefault("email", f"{username}@example.test")
    kwargs.setdefault("password", PASSWORD)
    return await add_user(deps, username=username, **kwargs)


def store_bytes(db: str) -> bytes:
    """Everything the store holds on disk: the database and its write-ahead log."""
    data = b""
    for suffix in ("", "-wal", "-shm"):
        path = Path(db + suffix)
        if path.exists():
            data += path.read_bytes()
    return data
